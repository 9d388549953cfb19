// The anchor page (pages/anchor), rendered by miniprogram-simulate (see fake-wx.js).
const path = require('path')
const simulate = require('miniprogram-simulate')

const { ROOT, installWx, standIn, render, text, shown, all } = require('./fake-wx.js')

const PUSH_URL = 'rtmp://live.test/live/app-7?txSecret=abc&txTime=6a000000'
const ANCHOR = simulate.load(path.join(ROOT, 'pages/anchor/anchor'), {
  usingComponents: {
    'live-pusher': standIn({ url: String, mode: String, devicePosition: String, beauty: Number, enableMic: Boolean }),
  },
})
function routes(extra) {
  return Object.assign(
    {
      'POST /api/login': () => ({ session: 'S1', openid: 'o_anchor', mocked: true, expires_in: 60 }),
      'POST /api/rooms/7/channel': () => ({ token: 'T', expires_in: 900, url: 'ws://live.test/api/v1/rooms/7/ws?token=T', role: 'admin' }),
    },
    extra,
  )
}

function fakePusher() {
  const calls = []
  const op = (name) => (options) => {
    calls.push(name)
    if (options && options.success) options.success({})
  }
  return { calls, start: op('start'), stop: op('stop'), switchCamera: op('switchCamera') }
}

test('anchor: live-pusher on the back end push URL, its controls, and the status from the channel', async () => {
  const world = installWx(routes({ 'GET /api/rooms/7/push_url': () => ({ push_url: PUSH_URL }) }))
  const pusher = fakePusher()
  wx.createLivePusherContext = () => pusher
  const page = render(ANCHOR)
  await page.instance.onLoad({ roomId: '7' })
  await simulate.sleep(5)
  expect(shown(page, '.pusher', 'url')).toBe(PUSH_URL)
  expect(shown(page, '.pusher', 'devicePosition')).toBe('front')
  expect(shown(page, '.pusher', 'enableMic')).toBe('true')

  world.sockets[0].open()
  world.sockets[0].emit({ type: 'status', roomid: 7, live_status: 102, previous_status: null, reason: 'r', time: 1, viewers: 0 })
  expect(text(page, '.status')).toBe('未开始')
  page.instance.start()
  expect(pusher.calls).toEqual(['start'])
  world.sockets[0].emit({ type: 'status', roomid: 7, live_status: 101, previous_status: 102, reason: 'r', time: 2, viewers: 3 })
  expect(text(page, '.status')).toBe('直播中')
  expect(text(page, '.banner')).toContain('3 人在看')

  const buttons = page.querySelectorAll('.controls .small')
  expect(all(page, '.controls .small')).toEqual(['结束推流', '后置摄像头', '静音'])
  buttons[1].dispatchEvent('tap')
  buttons[2].dispatchEvent('tap')
  page.instance.setBeauty({ detail: { value: 8 } })
  await simulate.sleep(0)
  expect(pusher.calls).toEqual(['start', 'switchCamera'])
  expect(shown(page, '.pusher', 'devicePosition')).toBe('back')
  expect(shown(page, '.pusher', 'enableMic')).toBe('false')
  expect(shown(page, '.pusher', 'beauty')).toBe('8')
  page.instance.onPusherState({ detail: { code: 3004 } })
  expect(text(page, '.banner')).toContain('推流地址已过期')
})

test('anchor: someone who is not an anchor is told why, and nothing is pushed', async () => {
  installWx(routes({}))
  global.wx.request = ((request) => (options) => {
    if (options.url.endsWith('/push_url')) {
      const error = { code: 'not_anchor', message: 'o_x is not an anchor: add the openid to ANCHOR_OPENIDS' }
      return setTimeout(() => options.success({ statusCode: 403, data: { error } }), 0)
    }
    return request(options)
  })(global.wx.request)
  const page = render(ANCHOR)
  await page.instance.onLoad({ roomId: '7' })
  expect(text(page, '.banner')).toContain('ANCHOR_OPENIDS')
  expect(page.querySelector('.pusher')).toBe(undefined)
})
