App({
  globalData: {
    nickname: '', // from a profile form, if the team adds one; the channel shows it beside comments
  },
})
