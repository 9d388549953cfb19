// The room channel over wx.connectSocket: JSON messages in, JSON messages out, reconnecting with a
// growing delay when the socket drops (the status message that comes first on every join tells the
// page where the room is now). Likes are added up and sent at most every LIKE_FLUSH_MS, as the
// channel asks (at most 10 like messages a second).
const LIKE_FLUSH_MS = 200
const MAX_LIKES_PER_MESSAGE = 100
const RETRY_MS = [1000, 2000, 5000, 10000]

function openChannel(getUrl, onMessage) {
  let task = null
  let closed = false
  let retries = 0
  let pendingLikes = 0
  let likeTimer = null
  let open = false

  function connect() {
    getUrl()
      .then((url) => {
        if (closed) return
        task = wx.connectSocket({ url })
        task.onOpen(() => {
          open = true
          retries = 0
        })
        task.onMessage((res) => {
          let message
          try {
            message = JSON.parse(res.data)
          } catch (e) {
            return
          }
          onMessage(message)
        })
        task.onClose(() => {
          open = false
          task = null
          if (!closed) retry()
        })
        task.onError(() => {}) // onClose follows
      })
      .catch(retry)
  }

  function retry() {
    if (closed) return
    const delay = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)]
    retries += 1
    setTimeout(connect, delay)
  }

  function send(message) {
    if (!task || !open) return false
    task.send({ data: JSON.stringify(message) })
    return true
  }

  function flushLikes() {
    likeTimer = null
    while (pendingLikes > 0) {
      const count = Math.min(pendingLikes, MAX_LIKES_PER_MESSAGE)
      if (!send({ type: 'like', count })) break
      pendingLikes -= count
    }
  }

  connect()
  return {
    send,
    comment: (text) => send({ type: 'comment', text }),
    subscribe: (on) => send({ type: on ? 'subscribe' : 'unsubscribe' }),
    like(count) {
      pendingLikes += count || 1
      if (!likeTimer) likeTimer = setTimeout(flushLikes, LIKE_FLUSH_MS)
    },
    close() {
      closed = true
      if (likeTimer) clearTimeout(likeTimer)
      if (task) task.close({})
    },
  }
}

module.exports = { openChannel, LIKE_FLUSH_MS }
