// The viewer page's state, and how each room channel message (docs/asyncapi.yaml) changes it.
// Pure functions of plain objects: no wx, no page, so they are unit-tested in Node.

const STATUS_TEXT = {
  101: '直播中',
  102: '未开始',
  103: '已结束',
  104: '禁播',
  105: '暂停中',
  106: '主播暂时离开',
  107: '已过期',
}
// live-player stays on while the anchor is away (106) or paused (105): minilive keeps the viewers
// connected then, and the picture comes back by itself.
const ON_AIR = [101, 105, 106]
const MAX_COMMENTS = 100 // the page shows the latest; older ones scroll away for good

function initialState() {
  return {
    roomid: 0,
    liveStatus: 0,
    statusText: '',
    playing: false, // live-player is on: the room is live, paused or waiting for its anchor
    ended: false,
    viewers: 0,
    likes: 0,
    comments: [],
    goods: [],
    pinned: null, // the goods the anchor pushed last
    subscribed: false,
    subscribers: 0,
    muted: false,
    notice: '', // an error from the channel, to show once
    qualities: [],
    quality: '',
    src: '',
  }
}

function withStatus(state, liveStatus) {
  return Object.assign({}, state, {
    liveStatus,
    statusText: STATUS_TEXT[liveStatus] || String(liveStatus),
    playing: ON_AIR.indexOf(liveStatus) >= 0,
    ended: liveStatus === 103 || liveStatus === 104 || liveStatus === 107,
  })
}

function goodsAction(state, message) {
  const goods = state.goods
  switch (message.action) {
    case 'push':
      return { pinned: message.goods }
    case 'add':
      return { goods: goods.concat(message.goods || []) }
    case 'delete': {
      const pinned = state.pinned && state.pinned.goods_id === message.goods_id ? null : state.pinned
      return { goods: goods.filter((g) => g.goods_id !== message.goods_id), pinned }
    }
    case 'onsale':
      return {
        goods: goods.map((g) => (g.goods_id === message.goods.goods_id ? Object.assign({}, g, { on_sale: message.on_sale }) : g)),
      }
    case 'sort': {
      const byId = {}
      goods.forEach((g) => { byId[g.goods_id] = g })
      return { goods: message.goods_ids.map((id) => byId[id]).filter(Boolean) }
    }
    default: // an edit of the goods' library (price, name): the shelf shows the new copy
      if (!message.goods) return {}
      return { goods: goods.map((g) => (g.goods_id === message.goods.goods_id ? Object.assign({}, g, message.goods) : g)) }
  }
}

// The state after one channel message; unknown messages change nothing.
function reduce(state, message, me) {
  if (!message || typeof message !== 'object') return state
  switch (message.type) {
    case 'status':
      return Object.assign(withStatus(state, message.live_status), { roomid: message.roomid, viewers: message.viewers })
    case 'viewers':
      return Object.assign({}, state, { viewers: message.viewers })
    case 'likes':
      return Object.assign({}, state, { likes: Math.max(state.likes, message.total) })
    case 'comment': {
      const comment = { id: message.id, nickname: message.nickname, text: message.text, mine: message.openid === me }
      return Object.assign({}, state, { comments: state.comments.concat([comment]).slice(-MAX_COMMENTS) })
    }
    case 'comment_deleted':
      return Object.assign({}, state, { comments: state.comments.filter((c) => c.id !== message.id) })
    case 'mute':
      return message.openid === me ? Object.assign({}, state, { muted: message.muted }) : state
    case 'goods':
      return Object.assign({}, state, goodsAction(state, message))
    case 'subscription':
      return Object.assign({}, state, { subscribed: message.subscribed })
    case 'subscribe':
    case 'unsubscribe':
      return Object.assign({}, state, { subscribers: message.subscribers })
    case 'error':
      return Object.assign({}, state, { notice: message.message })
    default:
      return state
  }
}

// Likes tapped here show at once; the channel's total (at most once a second) catches up after.
function tapLike(state, count) {
  return Object.assign({}, state, { likes: state.likes + (count || 1) })
}

// The renditions the back end offers ([{name, flv}], the one to start with first).
function withQualities(state, qualities) {
  const first = qualities[0] || { name: '', flv: '' }
  return Object.assign({}, state, { qualities, quality: first.name, src: first.flv })
}

// Switching plays another FLV URL; an unknown name keeps what plays.
function selectQuality(state, name) {
  const found = state.qualities.find((q) => q.name === name)
  if (!found) return state
  return Object.assign({}, state, { quality: found.name, src: found.flv })
}

module.exports = { STATUS_TEXT, ON_AIR, MAX_COMMENTS, initialState, reduce, tapLike, withQualities, selectQuality }
