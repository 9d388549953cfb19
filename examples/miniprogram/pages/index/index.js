// The app's rooms, each opening its viewer page (or the replay when it ended).
const api = require('../../utils/api.js')
const { STATUS_TEXT } = require('../../utils/room.js')

Component({
  data: { rooms: [], error: '' },
  methods: {
    onLoad() {
      return this.load()
    },
    onPullDownRefresh() {
      return this.load().then(() => wx.stopPullDownRefresh())
    },
    load() {
      return api
        .rooms()
        .then(({ rooms }) => {
          const listed = rooms.map((r) => Object.assign({}, r, { statusText: STATUS_TEXT[r.live_status] || '' }))
          this.setData({ rooms: listed, error: '' })
        })
        .catch((err) => this.setData({ error: err.message }))
    },
    open(event) {
      const { roomid, status } = event.currentTarget.dataset
      const page = status === 103 ? 'replay' : 'viewer'
      wx.navigateTo({ url: `/pages/${page}/${page}?roomId=${roomid}` })
    },
    anchor(event) {
      wx.navigateTo({ url: `/pages/anchor/anchor?roomId=${event.currentTarget.dataset.roomid}` })
    },
  },
})
