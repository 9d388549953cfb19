// The room channel as a moderator: comments as they come (delete, mute), the likes total, the goods
// on the shelf and pushing one. The console joins with a viewer token it asks for as the app, with
// the admin role (moderation needs it: docs/asyncapi.yaml).
import { post, session, socketUrl } from "./api.js";
import { confirmAction, h, toast } from "./dom.js";
import { t } from "./i18n.js";

const MAX_SHOWN = 500; // older comments leave the list: the page's memory stays bounded

function price(goods) {
  const yuan = (fen) => (fen / 100).toFixed(2);
  return goods.price_type === 2 || goods.price_type === 3 ? `¥${yuan(goods.price)} – ¥${yuan(goods.price2)}` : `¥${yuan(goods.price)}`;
}

export async function channelPanel(room) {
  const openid = `console-${session.role}-${session.appid || "admin"}`;
  const list = h("ol", { class: "comments", "aria-live": "polite", "data-testid": "comments" });
  const likes = h("output", { "data-testid": "likes" }, "0");
  const state = h("p", { class: "hint", role: "status" }, t("channel.connecting"));
  const text = h("input", { id: "comment-text", maxLength: 300, autocomplete: "off" });
  const muted = new Set();
  let socket = null;
  let closed = false;

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    else toast(t("channel.notConnected"), "error");
  }

  function commentItem(message) {
    const mute = h("button", { type: "button", class: "small", onclick: () => send({ type: "mute", openid: message.openid, muted: !muted.has(message.openid) }) },
      muted.has(message.openid) ? t("channel.unmute") : t("channel.mute"));
    mute.dataset.openid = message.openid;
    return h("li", { dataset: { id: String(message.id), openid: message.openid } },
      h("span", { class: "who" }, message.nickname || message.openid), " ",
      h("span", { class: "text" }, message.text), " ",
      h("span", { class: "tools" },
        h("button", { type: "button", class: "small danger-outline", "aria-label": t("channel.deleteOf", { id: message.id }), onclick: async () => {
          if (await confirmAction(t("channel.deleteTitle"), message.text, t("channel.delete"))) send({ type: "delete_comment", id: message.id });
        } }, t("channel.delete")),
        message.openid === openid ? null : mute));
  }

  function onMessage(message) {
    switch (message.type) {
      case "comment":
        list.append(commentItem(message));
        while (list.children.length > MAX_SHOWN) list.firstElementChild.remove();
        break;
      case "comment_deleted":
        list.querySelector(`li[data-id="${message.id}"]`)?.remove();
        break;
      case "mute":
        if (message.muted) muted.add(message.openid);
        else muted.delete(message.openid);
        for (const button of list.querySelectorAll(`button[data-openid="${CSS.escape(message.openid)}"]`)) {
          button.textContent = message.muted ? t("channel.unmute") : t("channel.mute");
        }
        break;
      case "likes":
        likes.textContent = String(message.total);
        break;
      case "goods":
        if (message.action === "push" && message.goods) toast(t("channel.pushed", { name: message.goods.name }));
        break;
      case "error":
        toast(`${message.message} (${message.code})`, "error");
        break;
      default:
        break;
    }
  }

  async function connect() {
    try {
      const { token } = await post(`/api/v1/rooms/${room.roomid}/viewer_tokens`, { openid, nickname: t("channel.nickname"), role: "admin" });
      socket = new WebSocket(socketUrl(`/api/v1/rooms/${room.roomid}/ws?token=${encodeURIComponent(token)}`));
    } catch (error) {
      state.textContent = `${t("channel.unavailable")}: ${error.message}`;
      return;
    }
    socket.onopen = () => (state.textContent = t("channel.connected"));
    socket.onmessage = (event) => {
      try {
        onMessage(JSON.parse(event.data));
      } catch {
        /* a frame that is not JSON is not ours to show */
      }
    };
    socket.onclose = () => {
      if (closed) return;
      state.textContent = t("channel.reconnecting");
      setTimeout(() => !closed && connect(), 2000);
    };
  }

  const shelf = h("ul", { class: "goods" }, ...(room.goods || []).map((goods) =>
    h("li", {}, h("img", { src: goods.cover_img ? `/media/${encodeURIComponent(goods.cover_img)}` : null, alt: "" }),
      h("span", {}, goods.name), " ", h("span", { class: "hint" }, price(goods)),
      h("button", { type: "button", class: "small", onclick: async () => {
        try {
          await post(`/api/v1/rooms/${room.roomid}/goods/${goods.goods_id}/push`);
        } catch (error) {
          toast(`${error.message} (${error.code})`, "error");
        }
      } }, t("channel.push")))));

  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    if (!text.value.trim()) return;
    send({ type: "comment", text: text.value.trim() });
    text.value = "";
  } }, h("label", { for: "comment-text" }, t("channel.comment")), text, h("button", { type: "submit" }, t("channel.send")));

  connect();
  return {
    node: h("section", { class: "channel", "aria-labelledby": "channel-title" },
      h("h2", { id: "channel-title" }, t("channel.title")), state,
      h("p", {}, t("channel.likes"), " ", likes),
      list, form,
      h("h3", {}, t("channel.shelf")),
      (room.goods || []).length ? shelf : h("p", { class: "hint" }, t("channel.noGoods"))),
    leave: () => {
      closed = true;
      if (socket) socket.close();
    },
  };
}
