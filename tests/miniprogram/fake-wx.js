// What the pages' tests put in place of WeChat: wx.request answered from a table of back end routes,
// wx.login, storage, and wx.connectSocket giving sockets the test drives. miniprogram-simulate's own
// wx stays for everything else.
const path = require('path')
const simulate = require('miniprogram-simulate')

const ROOT = path.join(__dirname, '../../examples/miniprogram')

// A socket the test drives: `emit` delivers a message to the page; `sent` is what the page sent.
function fakeSocket(options) {
  const handlers = {}
  const socket = {
    url: options.url,
    sent: [],
    onOpen: (f) => { handlers.open = f },
    onMessage: (f) => { handlers.message = f },
    onClose: (f) => { handlers.close = f },
    onError: (f) => { handlers.error = f },
    send: ({ data }) => socket.sent.push(JSON.parse(data)),
    close: () => handlers.close && handlers.close({}),
    open: () => handlers.open({}),
    emit: (message) => handlers.message({ data: JSON.stringify(message) }),
  }
  return socket
}

// Installs the fakes; `backend` maps "METHOD /path" to a function giving the JSON answer (others: 404).
function installWx(backend) {
  const world = { sockets: [], requests: [], storage: {} }
  global.getApp = () => ({ globalData: { nickname: '小明' } })
  Object.assign(global.wx, {
    getStorageSync: (key) => world.storage[key] || '',
    setStorageSync: (key, value) => { world.storage[key] = value },
    login: ({ success }) => success({ code: 'code-1' }),
    request: (options) => {
      const route = `${options.method} ${options.url.replace(/^https?:\/\/[^/]+/, '')}`
      world.requests.push({ route, data: options.data, header: options.header })
      const answer = backend[route]
      const reply = answer
        ? { statusCode: 200, data: answer() }
        : { statusCode: 404, data: { error: { code: 'not_found', message: route } } }
      setTimeout(() => options.success(reply), 0)
    },
    connectSocket: (options) => {
      const socket = fakeSocket(options)
      world.sockets.push(socket)
      return socket
    },
    setNavigationBarTitle: () => {},
    showToast: jest.fn(),
  })
  return world
}

// WeChat's native components are not in the simulator: a stand-in shows the properties a page gives.
function standIn(properties) {
  const shown = Object.keys(properties).map((name) => `<view class="${name}">{{${name}}}</view>`).join('')
  return simulate.load({ properties, template: shown })
}

// A page rendered and attached, ready for its onLoad.
function render(id) {
  const page = simulate.render(id)
  page.attach(document.createElement('parent-wrapper'))
  return page
}

const text = (node, selector) => {
  const found = selector ? node.querySelector(selector) : node
  return found ? found.dom.textContent.trim() : null
}
// A property a page gave a stand-in (`standIn`) found by `selector`; null when none is rendered.
const shown = (page, selector, name) => {
  const found = page.querySelector(selector)
  const holder = found && found.dom.querySelector(`.${name}`)
  return holder ? holder.textContent.trim() : null
}
const all = (node, selector) => node.querySelectorAll(selector).map((n) => n.dom.textContent.trim())

module.exports = { ROOT, installWx, standIn, render, text, shown, all }
