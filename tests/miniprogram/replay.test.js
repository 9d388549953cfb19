// The replay page (pages/replay), rendered by miniprogram-simulate (see fake-wx.js).
const path = require('path')
const simulate = require('miniprogram-simulate')

const { ROOT, installWx, standIn, render, text, shown, all } = require('./fake-wx.js')

const REPLAY = simulate.load(path.join(ROOT, 'pages/replay/replay'), {
  usingComponents: { video: standIn({ src: String }) },
})

test('replay: the video component plays the first replay HLS, and another segment on tap', async () => {
  const replays = [1, 2].map((n) => ({ replay_id: `r${n}`, hls: `http://live.test/replays/r${n}/index.m3u8`, cover: '', duration: 60 * n }))
  installWx({ 'GET /api/rooms/7/replays': () => ({ replays }) })
  const page = render(REPLAY)
  await page.instance.onLoad({ roomId: '7' })
  expect(shown(page, '.video', 'src')).toBe(replays[0].hls)
  expect(all(page, '.segment')).toEqual(['第 1 段 · 60 秒', '第 2 段 · 120 秒'])
  page.querySelectorAll('.segment')[1].dispatchEvent('tap')
  await simulate.sleep(0)
  expect(shown(page, '.video', 'src')).toBe(replays[1].hls)
})

test('replay: a room without replays says so', async () => {
  installWx({ 'GET /api/rooms/7/replays': () => ({ replays: [] }) })
  const page = render(REPLAY)
  await page.instance.onLoad({ roomId: '7' })
  expect(text(page, '.banner')).toBe('暂无回放')
  expect(page.querySelector('.video')).toBe(undefined)
})
