// The replay page: the video component plays a replay's HLS (live-player does not play m3u8);
// a room with several stretches of live has a replay per stretch, chosen from the list.
const api = require('../../utils/api.js')

Component({
  data: { replays: [], current: '', error: '' },
  methods: {
    onLoad(query) {
      return api
        .replays(Number(query.roomId))
        .then(({ replays }) => {
          const first = replays[0]
          this.setData({ replays, current: first ? first.hls : '', error: first ? '' : '暂无回放' })
        })
        .catch((err) => this.setData({ error: err.message }))
    },
    choose(event) {
      this.setData({ current: event.currentTarget.dataset.hls })
    },
  },
})
