// The anchor page: live-pusher on the signed push URL from the back end (ANCHOR_OPENIDS only), camera
// switch, beauty, mute, and a status banner from the room channel (the anchor sees what viewers see:
// 101 once minilive has the stream, 105 when an operator pauses, 103 at the end).
const api = require('../../utils/api.js')
const room = require('../../utils/room.js')
const { openChannel } = require('../../utils/channel.js')

// live-pusher codes worth telling the anchor about (docs: component/live-pusher).
const PUSHER_NOTICES = {
  1002: '推流中',
  '-1301': '打开摄像头失败：请在设置中允许摄像头',
  '-1302': '打开麦克风失败：请在设置中允许麦克风',
  '-1307': '网络断开，重试多次失败：请检查网络后重新开播',
  3004: '服务器拒绝推流：推流地址已过期或不属于这个直播间，请重新进入',
}

Component({
  data: Object.assign(room.initialState(), {
    pushUrl: '',
    pushing: false,
    front: true,
    beauty: 5,
    micMuted: false,
    pusherNotice: '',
    loadError: '',
  }),
  methods: {
    onLoad(query) {
      this.roomid = Number(query.roomId)
      this.state = room.initialState()
      return api
        .pushUrl(this.roomid)
        .then(({ push_url }) => {
          this.setData({ pushUrl: push_url })
          this.pusher = wx.createLivePusherContext()
          this.channel = openChannel(
            () => api.channel(this.roomid, '主播').then((reply) => reply.url),
            (message) => {
              const state = (this.state = room.reduce(this.state, message, api.openid()))
              const { statusText, liveStatus, viewers, likes } = state
              this.setData({ statusText, liveStatus, viewers, likes })
            },
          )
        })
        .catch((err) => this.setData({ loadError: err.message }))
    },
    onUnload() {
      if (this.pusher && this.data.pushing) this.pusher.stop()
      if (this.channel) this.channel.close()
    },
    start() {
      this.pusher.start({ success: () => this.setData({ pushing: true }) })
    },
    stop() {
      this.pusher.stop({ success: () => this.setData({ pushing: false }) })
    },
    switchCamera() {
      this.pusher.switchCamera({ success: () => this.setData({ front: !this.data.front }) })
    },
    setBeauty(event) {
      this.setData({ beauty: event.detail.value })
    },
    toggleMic() {
      this.setData({ micMuted: !this.data.micMuted })
    },
    onPusherState(event) {
      const notice = PUSHER_NOTICES[event.detail.code]
      if (notice) this.setData({ pusherNotice: notice })
    },
  },
})
