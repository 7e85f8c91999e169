// The Pipe quickstart backend on the original 2011 Node client, unchanged:
// `npm install` here (it installs pusher-pipe@0.0.10), then `node backend.js`.
// Credentials default to the relay's demo app; set RELAY_HOST, RELAY_PORT,
// PIPE_APP_ID, PIPE_KEY and PIPE_SECRET for another one.
var Pipe = require('pusher-pipe');

var client = Pipe.createClient({
  key: process.env.PIPE_KEY || 'demo-key',
  secret: process.env.PIPE_SECRET || 'demo-secret',
  app_id: Number(process.env.PIPE_APP_ID || 1),
  host: process.env.RELAY_HOST || '127.0.0.1',
  port: Number(process.env.RELAY_PORT || 6001),
});

client.on('connected', function () {
  console.log('backend connected as ' + client.connection_id);
});

client.subscribe(['socket_message', 'socket_existence']);

client.sockets.on('open', function (socket_id) {
  console.log('new socket: ' + socket_id);
});

client.sockets.on('event:eventFromBrowser', function (socket_id, data) {
  console.log('eventFromBrowser from ' + socket_id + ': ' + JSON.stringify(data));
  client.socket(socket_id).trigger('acknowledge', { message: 'Rodger' });
});

client.sockets.on('close', function (socket_id) {
  console.log('socket closed: ' + socket_id);
});

client.connect();
