// The viewer page: live-player on the FLV URL the back end gives, a quality switch, and everything
// else (status, audience, comments, likes, goods, subscribe) from the room channel, so the page never
// polls getLiveStatus. The state's changes are utils/room.js's; this page only wires them to wx.
const api = require('../../utils/api.js')
const room = require('../../utils/room.js')
const { openChannel } = require('../../utils/channel.js')

Component({
  data: Object.assign(room.initialState(), { draft: '', loadError: '' }),
  methods: {
    onLoad(query) {
      this.roomid = Number(query.roomId)
      this.state = room.initialState()
      this.me = ''
      return api
        .room(this.roomid)
        .then((page) => {
          this.update(room.withQualities(Object.assign({}, this.state, { goods: page.goods }), page.qualities))
          wx.setNavigationBarTitle({ title: page.room.name })
          this.channel = openChannel(() => this.channelUrl(), (message) => this.onChannelMessage(message))
        })
        .catch((err) => this.setData({ loadError: err.message }))
    },
    onUnload() {
      if (this.channel) this.channel.close()
    },
    channelUrl() {
      // A viewer token lasts minutes: each (re)connection asks for a fresh one.
      return api.channel(this.roomid, getApp().globalData.nickname || '').then((reply) => {
        this.me = api.openid()
        return reply.url
      })
    },
    onChannelMessage(message) {
      const before = this.state.notice
      this.update(room.reduce(this.state, message, this.me))
      if (this.state.notice && this.state.notice !== before) {
        wx.showToast({ title: this.state.notice, icon: 'none' })
        this.state = Object.assign({}, this.state, { notice: '' })
      }
    },
    update(state) {
      this.state = state
      this.setData(state)
    },
    switchQuality(event) {
      this.update(room.selectQuality(this.state, event.currentTarget.dataset.name))
    },
    onPlayerState(event) {
      // -2301: live-player gave up reconnecting. If the room is live, start it again.
      if (event.detail.code === -2301 && this.state.playing) {
        const src = this.state.src
        this.setData({ src: '' })
        this.setData({ src })
      }
    },
    onDraft(event) {
      this.setData({ draft: event.detail.value })
    },
    sendComment() {
      const text = this.data.draft.trim()
      if (!text || !this.channel) return
      if (this.channel.comment(text)) this.setData({ draft: '' })
    },
    like() {
      if (!this.channel) return
      this.channel.like(1)
      this.update(room.tapLike(this.state, 1))
    },
    toggleSubscribe() {
      if (this.channel) this.channel.subscribe(!this.state.subscribed)
    },
    openGoods(event) {
      const url = event.currentTarget.dataset.url
      if (url) wx.navigateTo({ url: url.startsWith('/') ? url : '/' + url })
    },
  },
})
