// Where the sample back end (examples/backend) runs. In production: an https:// host on the
// mini-program's request domain list, and minilive's wss:// host on its socket domain list.
module.exports = {
  BACKEND_URL: 'http://127.0.0.1:8000',
}
