// utils/room.js: the viewer page's state from room channel messages (docs/asyncapi.yaml).
const path = require('path')

const room = require(path.join(__dirname, '../../examples/miniprogram/utils/room.js'))

const status = (liveStatus, previous = null) => ({
  type: 'status', roomid: 7, live_status: liveStatus, previous_status: previous, reason: 'test', time: 1, viewers: 3,
})

test('status messages move the banner and the player', () => {
  let state = room.reduce(room.initialState(), status(102))
  expect(state).toMatchObject({ roomid: 7, liveStatus: 102, statusText: '未开始', playing: false, ended: false, viewers: 3 })
  state = room.reduce(state, status(101, 102))
  expect(state).toMatchObject({ statusText: '直播中', playing: true, ended: false })
  state = room.reduce(state, status(105, 101))
  expect(state).toMatchObject({ statusText: '暂停中', playing: true, ended: false })
  state = room.reduce(state, status(106, 105))
  expect(state).toMatchObject({ statusText: '主播暂时离开', playing: true })
  state = room.reduce(state, status(103, 106))
  expect(state).toMatchObject({ statusText: '已结束', playing: false, ended: true })
  expect(room.reduce(state, { type: 'viewers', roomid: 7, viewers: 9 }).viewers).toBe(9)
})

test('the reducer never mutates the state it is given, and ignores what it does not know', () => {
  const before = room.initialState()
  const frozen = JSON.stringify(before)
  room.reduce(before, status(101))
  room.reduce(before, { type: 'comment', id: 1, openid: 'a', nickname: 'A', text: 'hi', time: 1, stream_ms: null })
  expect(JSON.stringify(before)).toBe(frozen)
  expect(room.reduce(before, { type: 'something_new' })).toBe(before)
  expect(room.reduce(before, null)).toBe(before)
})

test('comments arrive in order, mine are marked, deleted ones go, and the list is bounded', () => {
  let state = room.initialState()
  const comment = (id, openid) => ({ type: 'comment', roomid: 7, id, openid, nickname: openid.toUpperCase(), text: `c${id}`, time: id, stream_ms: 10 })
  state = room.reduce(state, comment(1, 'alice'), 'bob')
  state = room.reduce(state, comment(2, 'bob'), 'bob')
  state = room.reduce(state, comment(3, 'alice'), 'bob')
  expect(state.comments.map((c) => [c.id, c.text, c.mine])).toEqual([[1, 'c1', false], [2, 'c2', true], [3, 'c3', false]])
  state = room.reduce(state, { type: 'comment_deleted', roomid: 7, id: 2 })
  expect(state.comments.map((c) => c.id)).toEqual([1, 3])
  for (let id = 4; id < 4 + room.MAX_COMMENTS; id++) state = room.reduce(state, comment(id, 'carol'))
  expect(state.comments.length).toBe(room.MAX_COMMENTS)
  expect(state.comments[state.comments.length - 1].id).toBe(3 + room.MAX_COMMENTS)
})

test('likes: taps count at once, the channel total never goes back', () => {
  let state = room.tapLike(room.initialState(), 1)
  state = room.tapLike(state, 2)
  expect(state.likes).toBe(3)
  state = room.reduce(state, { type: 'likes', roomid: 7, total: 2 }) // older than my taps
  expect(state.likes).toBe(3)
  state = room.reduce(state, { type: 'likes', roomid: 7, total: 40 })
  expect(state.likes).toBe(40)
})

test('mute applies to me only; errors become a notice', () => {
  let state = room.reduce(room.initialState(), { type: 'mute', roomid: 7, openid: 'alice', muted: true }, 'bob')
  expect(state.muted).toBe(false)
  state = room.reduce(state, { type: 'mute', roomid: 7, openid: 'bob', muted: true }, 'bob')
  expect(state.muted).toBe(true)
  state = room.reduce(state, { type: 'error', code: 'muted', message: 'you are muted' })
  expect(state.notice).toBe('you are muted')
})

test('goods: the shelf follows add, onsale, sort and delete; a push pins the goods', () => {
  const goods = (id, name) => ({ goods_id: id, name, price: 100 * id, url: `pages/goods?id=${id}`, cover_img: '' })
  let state = Object.assign(room.initialState(), { goods: [goods(1, 'tea')] })
  state = room.reduce(state, { type: 'goods', action: 'add', goods: [goods(2, 'cup'), goods(3, 'pot')], time: 1 })
  expect(state.goods.map((g) => g.goods_id)).toEqual([1, 2, 3])
  state = room.reduce(state, { type: 'goods', action: 'onsale', goods: goods(2, 'cup'), on_sale: 0, time: 2 })
  expect(state.goods.find((g) => g.goods_id === 2).on_sale).toBe(0)
  state = room.reduce(state, { type: 'goods', action: 'sort', goods_ids: [3, 1, 2], time: 3 })
  expect(state.goods.map((g) => g.goods_id)).toEqual([3, 1, 2])
  state = room.reduce(state, { type: 'goods', action: 'push', goods: goods(3, 'pot'), time: 4 })
  expect(state.pinned.name).toBe('pot')
  state = room.reduce(state, { type: 'goods', action: 'edit', goods: goods(1, 'green tea'), time: 5 })
  expect(state.goods.find((g) => g.goods_id === 1).name).toBe('green tea')
  state = room.reduce(state, { type: 'goods', action: 'delete', goods_id: 3, time: 6 })
  expect(state.goods.map((g) => g.goods_id)).toEqual([1, 2])
  expect(state.pinned).toBe(null)
})

test('subscribe: my answer and the room count', () => {
  let state = room.reduce(room.initialState(), { type: 'subscription', roomid: 7, subscribed: true, changed: true })
  expect(state.subscribed).toBe(true)
  state = room.reduce(state, { type: 'subscribe', openid: 'x', subscribers: 4 })
  expect(state.subscribers).toBe(4)
})

test('quality switching plays the chosen rendition; an unknown one changes nothing', () => {
  const qualities = [
    { name: 'auto', flv: 'http://h/live/a-1.flv?s=1' },
    { name: '480p', flv: 'http://h/live/a-1_480p.flv?s=1' },
  ]
  let state = room.withQualities(room.initialState(), qualities)
  expect([state.quality, state.src]).toEqual(['auto', 'http://h/live/a-1.flv?s=1'])
  state = room.selectQuality(state, '480p')
  expect([state.quality, state.src]).toEqual(['480p', 'http://h/live/a-1_480p.flv?s=1'])
  expect(room.selectQuality(state, '4k')).toBe(state)
})
