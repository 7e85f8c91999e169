/*
 * pipe-client.js: browser helpers for pages that talk to a Pipe relay
 * through the official pusher-js (8.x, Pusher Channels protocol 7).
 * Load it after pusher-js. MIT licence, like the rest of the project.
 *
 *   pusher.back_channel.trigger(event, data)   socket -> backend pipe
 *   pusher.back_channel.bind(event, fn)         backend pipe -> this socket
 *   new Pusher(key, {
 *     channelAuthorization: {customHandler: Pusher.pipeAuthorizer},
 *     userAuthentication: {customHandler: Pusher.pipeUserAuthenticator}
 *   })
 *
 * Plain ES5 on purpose: the relay serves this file as is, with no build step.
 */
(function (Pusher) {
  'use strict';
  if (!Pusher || !Pusher.prototype) {
    return; // pusher-js not loaded (yet): nothing to extend
  }

  function BackChannel(pusher) {
    var self = this;
    this.pusher = pusher;
    // Event name -> callbacks; pages written for the 2011 alpha inspected it.
    this.callbacks = {};
    // A pipe's send_to_socket arrives as a frame with no "channel". Listening
    // on the connection (rather than pusher.bind) keeps channel events that
    // happen to share a name out of the back channel. pusher-js has already
    // JSON-decoded "data" when it emits "message".
    pusher.connection.bind('message', function (message) {
      if (message.channel) {
        return;
      }
      var list = self.callbacks[message.event];
      if (!list) {
        return;
      }
      // Copy, so a callback may unbind itself (or others) while we iterate.
      list = list.slice();
      for (var i = 0; i < list.length; i++) {
        list[i].fn.call(list[i].context || self, message.data);
      }
    });
  }

  // A back-channel message is any channel-less event that is not pusher:*;
  // pusher-js returns false (and drops it) when the socket is not connected.
  BackChannel.prototype.trigger = function (event, data) {
    return this.pusher.send_event(event, data);
  };

  BackChannel.prototype.bind = function (event, callback, context) {
    (this.callbacks[event] = this.callbacks[event] || []).push({fn: callback, context: context});
    return this;
  };

  // Same contract as pusher-js unbind: no callback removes all for the event,
  // no event removes the callback everywhere.
  BackChannel.prototype.unbind = function (event, callback) {
    var names = event ? [event] : Object.keys(this.callbacks);
    for (var n = 0; n < names.length; n++) {
      var list = this.callbacks[names[n]] || [];
      for (var i = list.length - 1; i >= 0; i--) {
        if (!callback || list[i].fn === callback) {
          list.splice(i, 1);
        }
      }
      if (!list.length) {
        delete this.callbacks[names[n]];
      }
    }
    return this;
  };

  // Lazy, so instances created before this script loaded get one too, and
  // pages that never touch back_channel add no listener.
  Object.defineProperty(Pusher.prototype, 'back_channel', {
    configurable: true,
    get: function () {
      var channel = new BackChannel(this);
      Object.defineProperty(this, 'back_channel', {value: channel, configurable: true});
      return channel;
    }
  });

  /*
   * channelAuthorization.customHandler. pusher-js 8.6.0 calls it with
   * ({channelName, socketId}, callback) and sends
   * {"event":"pusher:subscribe","data":{"auth":..., "channel_data":..., "channel":...}}
   * with whatever the callback got; an undefined channel_data is left out of
   * the frame. An empty auth makes the relay ask the backend pipe (pipe
   * protocol section 5), whose answer also supplies presence channel_data.
   *
   * Presence channels: pusher-js 8.6.0 checks the answer itself. Without
   * channel_data it waits for pusher.signin() to finish and takes the signed-in
   * user id as members.me; if no sign-in was requested it refuses locally
   * (logs "Invalid auth response ... or the user should be signed in", emits
   * pusher:subscription_error, sends nothing). So presence through the pipe
   * needs pusher.signin() (e.g. with pipeUserAuthenticator) before subscribing.
   * We deliberately invent no placeholder channel_data: pusher-js would take
   * its user_id as members.me and silently report the wrong "me".
   *
   * private-encrypted- channels cannot be authorized this way: pusher-js
   * requires a shared_secret in the answer, and refuses without one.
   */
  Pusher.pipeAuthorizer = function (params, callback) {
    callback(null, {auth: ''});
  };

  /*
   * userAuthentication.customHandler. pusher-js 8.6.0 calls it with
   * ({socketId}, callback) and sends {auth, user_data} from the answer
   * unchecked. The relay requires user_data to be a string (it is the signed
   * JSON text in normal sign-ins); with an empty auth it ignores it and takes
   * the user from the backend pipe's answer, echoed in pusher:signin_success
   * (where pusher-js does require a JSON object with a string id). "{}" is the
   * smallest honest placeholder: valid JSON, and it claims no user.
   */
  Pusher.pipeUserAuthenticator = function (params, callback) {
    callback(null, {auth: '', user_data: '{}'});
  };
})(typeof Pusher !== 'undefined' ? Pusher : undefined);
