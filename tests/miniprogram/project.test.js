// The sample project checked by miniprogram-ci, WeChat's own build tool, offline: its compile reads
// app.json, project.config.json, sitemap.json and every page as WeChat DevTools would, and refuses
// what breaks the mini-program rules. No upload, so no private key is used: miniprogram-ci insists on
// one being given and fetches the app's attributes with it, so the key given is a placeholder and the
// attributes are answered here (a plain mini-program without plugins). Its one other network call
// (a list of allowed extensions) fails without internet and the compile goes on without it.
const fs = require('fs')
const os = require('os')
const path = require('path')
const ci = require('miniprogram-ci')

const ROOT = path.join(__dirname, '../../examples/miniprogram')
jest.setTimeout(60000)

async function compile(projectPath) {
  const project = new ci.Project({
    appid: 'touristappid',
    type: 'miniProgram',
    projectPath,
    privateKey: 'offline: never sent',
    attr: async () => ({ platform: true, appType: 0, setting: {} }),
    ignores: ['node_modules/**/*'],
  })
  return ci.getCompiledResult({ project }, path.join(os.tmpdir(), `minilive-mp-${process.pid}.zip`))
}

function copyWith(change) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'minilive-mp-'))
  fs.cpSync(ROOT, dir, { recursive: true })
  const appJson = JSON.parse(fs.readFileSync(path.join(dir, 'app.json'), 'utf8'))
  change(appJson)
  fs.writeFileSync(path.join(dir, 'app.json'), JSON.stringify(appJson))
  return dir
}

test('the sample compiles: every page of app.json with its files', async () => {
  const files = await compile(ROOT)
  const { pages } = JSON.parse(fs.readFileSync(path.join(ROOT, 'app.json'), 'utf8'))
  expect(pages).toEqual(['pages/index/index', 'pages/viewer/viewer', 'pages/anchor/anchor', 'pages/replay/replay'])
  for (const page of pages) {
    for (const ext of ['.js', '.json', '.wxml', '.wxss']) expect(Object.keys(files)).toContain(page + ext)
  }
  expect(Object.keys(files)).toEqual(expect.arrayContaining(['app.js', 'app.json', 'app.wxss', 'sitemap.json']))
})

test('the check bites: a broken app.json is refused with the field named', async () => {
  const dir = copyWith((app) => { app.window.navigationBarTextStyle = 'purple' })
  await expect(compile(dir)).rejects.toThrow(/navigationBarTextStyle/)
})
