// The viewer page (pages/viewer), rendered by miniprogram-simulate with wx.request, wx.login and
// wx.connectSocket answered by the test: what a viewer sees as channel messages arrive, and what the
// page sends when the viewer comments, likes, subscribes or switches quality.
const path = require('path')
const simulate = require('miniprogram-simulate')

const { ROOT, installWx, standIn, render, text, shown, all } = require('./fake-wx.js')
const { LIKE_FLUSH_MS } = require(path.join(ROOT, 'utils/channel.js'))

const QUALITIES = [
  { name: 'auto', flv: 'http://live.test/live/app-7.flv?txTime=1' },
  { name: '480p', flv: 'http://live.test/live/app-7_480p.flv?txTime=1' },
]
const GOODS = [{ goods_id: 1, name: '茶', price: 1990, url: 'pages/goods?id=1', cover_img: '', on_sale: 1 }]

// Loaded once: the page's module is required once per test file. live-player is a stand-in.
const VIEWER = simulate.load(path.join(ROOT, 'pages/viewer/viewer'), {
  usingComponents: { 'live-player': standIn({ src: String, mode: String, autoplay: Boolean }) },
})
let sockets
let requests

beforeEach(() => {
  ;({ sockets, requests } = installWx({
    'POST /api/login': () => ({ session: 'S1', openid: 'o_me', mocked: true, expires_in: 60 }),
    'GET /api/rooms/7': () => ({ room: { roomid: 7, name: '测试直播间', live_status: 102 }, goods: GOODS, qualities: QUALITIES, hls: '' }),
    'POST /api/rooms/7/channel': () => ({ token: 'T', expires_in: 900, url: 'ws://live.test/api/v1/rooms/7/ws?token=T', role: 'viewer' }),
  }))
})

async function openViewer() {
  const page = render(VIEWER)
  await page.instance.onLoad({ roomId: '7' })
  await simulate.sleep(5)
  expect(sockets.length).toBe(1)
  sockets[0].open()
  return page
}

const playing = (page) => shown(page, '#player', 'src')
const status = (liveStatus, previous = null) => ({ type: 'status', roomid: 7, live_status: liveStatus, previous_status: previous, reason: 'r', time: 1, viewers: 2 })

test('logs in, gets a viewer token from the back end and joins the channel it names', async () => {
  await openViewer()
  expect(requests.map((r) => r.route)).toEqual(['POST /api/login', 'GET /api/rooms/7', 'POST /api/rooms/7/channel'])
  expect(requests[1].header).toEqual({ Authorization: 'Bearer S1' })
  expect(requests[2].data).toEqual({ nickname: '小明' })
  expect(sockets[0].url).toBe('ws://live.test/api/v1/rooms/7/ws?token=T')
})

test('the status banner and the player follow the channel, with no polling', async () => {
  const page = await openViewer()
  sockets[0].emit(status(102))
  expect(text(page, '.status')).toBe('未开始')
  expect(playing(page)).toBe(null)
  sockets[0].emit(status(101, 102))
  expect(text(page, '.status')).toBe('直播中')
  expect(playing(page)).toBe(QUALITIES[0].flv)
  sockets[0].emit(status(105, 101))
  expect(text(page, '.status')).toBe('暂停中')
  expect(playing(page)).toBe(QUALITIES[0].flv) // the stream is held, the player waits for it
  sockets[0].emit(status(103, 105))
  expect(text(page, '.status')).toBe('已结束')
  expect(text(page, '.placeholder')).toBe('直播已结束')
  expect(playing(page)).toBe(null)
  expect(requests.filter((r) => r.route.includes('status'))).toEqual([])
})

test('the quality switch plays the chosen rendition', async () => {
  const page = await openViewer()
  sockets[0].emit(status(101))
  expect(all(page, '.quality')).toEqual(['auto', '480p'])
  page.querySelectorAll('.quality')[1].dispatchEvent('tap')
  await simulate.sleep(0)
  expect(playing(page)).toBe(QUALITIES[1].flv)
  expect(page.querySelector('.quality.active').dom.textContent.trim()).toBe('480p')
})

test('comments: sent over the socket, listed in the order the channel gives, deleted ones hidden', async () => {
  const page = await openViewer()
  page.instance.onDraft({ detail: { value: ' 你好 ' } })
  page.instance.sendComment()
  expect(sockets[0].sent).toEqual([{ type: 'comment', text: '你好' }])
  expect(page.instance.data.draft).toBe('')
  const comment = (id, openid, body) => ({ type: 'comment', roomid: 7, id, openid, nickname: openid, text: body, time: id, stream_ms: null })
  sockets[0].emit(comment(1, 'o_other', '欢迎'))
  sockets[0].emit(comment(2, 'o_me', '你好'))
  expect(all(page, '.comment')).toEqual(['o_other：欢迎', 'o_me：你好'])
  expect(all(page, '.comment.mine')).toEqual(['o_me：你好'])
  sockets[0].emit({ type: 'comment_deleted', roomid: 7, id: 1 })
  expect(all(page, '.comment')).toEqual(['o_me：你好'])
  sockets[0].emit({ type: 'error', code: 'rate_limited', message: 'slow down' })
  expect(wx.showToast).toHaveBeenCalledWith({ title: 'slow down', icon: 'none' })
})

test('likes are added up into one message; the count shows at once', async () => {
  const page = await openViewer()
  for (let i = 0; i < 7; i++) page.instance.like()
  expect(text(page, '.viewers')).toContain('7 赞')
  expect(sockets[0].sent).toEqual([])
  await simulate.sleep(LIKE_FLUSH_MS + 50)
  expect(sockets[0].sent).toEqual([{ type: 'like', count: 7 }])
  sockets[0].emit({ type: 'likes', roomid: 7, total: 30 })
  expect(text(page, '.viewers')).toContain('30 赞')
})

test('goods shelf and pinned goods; subscribe', async () => {
  const page = await openViewer()
  expect(all(page, '.goods')).toEqual(['茶'])
  expect(page.querySelector('.pinned')).toBe(undefined)
  sockets[0].emit({ type: 'goods', action: 'push', goods: GOODS[0], time: 1 })
  expect(text(page, '.pinned')).toContain('茶')
  expect(text(page, '.pinned .price')).toBe('¥19.9')
  page.querySelector('.subscribe').dispatchEvent('tap')
  await simulate.sleep(0)
  expect(sockets[0].sent).toEqual([{ type: 'subscribe' }])
  sockets[0].emit({ type: 'subscription', roomid: 7, subscribed: true, changed: true })
  expect(text(page, '.subscribe')).toBe('已订阅')
})

test('a dropped socket reconnects with a fresh viewer token', async () => {
  await openViewer()
  sockets[0].close()
  await simulate.sleep(1100) // the first retry waits a second
  expect(sockets.length).toBe(2)
  expect(requests.filter((r) => r.route === 'POST /api/rooms/7/channel').length).toBe(2)
  expect(sockets[1].url).toBe('ws://live.test/api/v1/rooms/7/ws?token=T')
})
