// The sample back end's API (examples/backend), over wx.request, with the login session kept in storage.
const { BACKEND_URL } = require('../config.js')

const SESSION_KEY = 'minilive_session'
const OPENID_KEY = 'minilive_openid' // tells the page which comments are the user's own

function call(path, options) {
  const opts = options || {}
  const session = wx.getStorageSync(SESSION_KEY)
  return new Promise((resolve, reject) => {
    wx.request({
      url: BACKEND_URL + path,
      method: opts.method || 'GET',
      data: opts.data,
      header: session ? { Authorization: 'Bearer ' + session } : {},
      success(res) {
        if (res.statusCode >= 200 && res.statusCode < 300) resolve(res.data)
        else {
          const error = (res.data && res.data.error) || { code: 'http_' + res.statusCode, message: '请求失败' }
          reject(Object.assign(new Error(error.message), { code: error.code, status: res.statusCode }))
        }
      },
      fail(err) {
        reject(Object.assign(new Error(err.errMsg || 'network error'), { code: 'network' }))
      },
    })
  })
}

// wx.login's code -> the back end's session (code2session happens there, never here: the AppSecret
// must not ship in the mini-program).
function login() {
  return new Promise((resolve, reject) => {
    wx.login({ success: (res) => resolve(res.code), fail: reject })
  })
    .then((code) => call('/api/login', { method: 'POST', data: { code } }))
    .then((reply) => {
      wx.setStorageSync(SESSION_KEY, reply.session)
      wx.setStorageSync(OPENID_KEY, reply.openid)
      return reply
    })
}

// A call that logs in first when there is no session, and once more when the session expired.
function authed(path, options) {
  const again = () => login().then(() => call(path, options))
  if (!wx.getStorageSync(SESSION_KEY)) return again()
  return call(path, options).catch((err) => (err.status === 401 ? again() : Promise.reject(err)))
}

module.exports = {
  login,
  openid: () => wx.getStorageSync(OPENID_KEY) || '',
  rooms: () => call('/api/rooms'),
  room: (roomid) => authed('/api/rooms/' + roomid),
  channel: (roomid, nickname) => authed('/api/rooms/' + roomid + '/channel', { method: 'POST', data: { nickname } }),
  pushUrl: (roomid) => authed('/api/rooms/' + roomid + '/push_url'),
  replays: (roomid) => call('/api/rooms/' + roomid + '/replays'),
}
