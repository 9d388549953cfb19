// A room's status from its channel (GET /api/v1/rooms/{id}/ws, read-only without a token): the
// badge changes when the room does, with no polling. Reconnects after a drop, with a backoff.
import { socketUrl } from "./api.js";

export function watchStatus(roomid, onMessage) {
  let socket = null;
  let closed = false;
  let delay = 1000;
  const open = () => {
    socket = new WebSocket(socketUrl(`/api/v1/rooms/${roomid}/ws`));
    socket.onmessage = (event) => {
      delay = 1000;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      onMessage(message);
    };
    socket.onclose = () => {
      if (closed) return;
      setTimeout(() => !closed && open(), delay);
      delay = Math.min(delay * 2, 30000);
    };
  };
  open();
  return () => {
    closed = true;
    if (socket) socket.close();
  };
}
