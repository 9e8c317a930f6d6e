// A peer server for benchmarking ringpush side by side: uWebSockets.js speaking ringpush's API.
//
//   node uws-server.js PORT ADMIN_PORT
//
// WebSocket listener (PORT, 0.0.0.0):
//   GET /ws/<channel>  subscribe to <channel> ([A-Za-z0-9_.:-]{1,128}, else 400) via uWS pub/sub
//   GET /echo          echo every data message with its opcode
// Admin listener (ADMIN_PORT, 127.0.0.1), HTTP/1.1 keep-alive:
//   POST /publish/<channel>  body → every subscriber (text for text/* and application/json,
//                            binary otherwise); 200 {"channel":"<c>","subscribers":N}
//   GET /healthz             200
// The uWS module is loaded from $UWS_MODULE (default: the npm name `uwebsockets`).
// Settings mirror ringpush's defaults where uWS has an equivalent: 1 MiB max message,
// 1 MiB max backpressure per connection, no compression, pings on idle.
'use strict';

const uWS = require(process.env.UWS_MODULE || 'uwebsockets');

const port = Number(process.argv[2] || 8080);
const adminPort = Number(process.argv[3] || 9090);
if (!Number.isInteger(port) || !Number.isInteger(adminPort)) {
  console.error('usage: uws-server.js PORT ADMIN_PORT');
  process.exit(2);
}

const CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const MAX_MESSAGE = 1024 * 1024;

const wsBehavior = {
  compression: uWS.DISABLED,
  maxPayloadLength: MAX_MESSAGE,
  maxBackpressure: MAX_MESSAGE,
  idleTimeout: 120,
  sendPingsAutomatically: true,
};

const app = uWS.App();

app.ws('/ws/:channel', {
  ...wsBehavior,
  upgrade: (res, req, context) => {
    const channel = req.getParameter(0);
    if (!CHANNEL_RE.test(channel)) {
      res.writeStatus('400 Bad Request').writeHeader('Connection', 'close').end('bad channel\n');
      return;
    }
    res.upgrade(
      { channel },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    ws.subscribe(ws.getUserData().channel);
  },
  message: () => {
    // Clients do not publish (ringpush without --client-publish ignores their messages).
  },
});

app.ws('/echo', {
  ...wsBehavior,
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary);
  },
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').writeHeader('Connection', 'close').end('not found\n');
});

const admin = uWS.App();

admin.post('/publish/:channel', (res, req) => {
  const channel = req.getParameter(0);
  const type = req.getHeader('content-type').toLowerCase();
  const isBinary = !(type.startsWith('text/') || type.startsWith('application/json'));
  let aborted = false;
  res.onAborted(() => {
    aborted = true;
  });
  if (!CHANNEL_RE.test(channel)) {
    res.writeStatus('400 Bad Request').end('bad channel\n');
    return;
  }
  const chunks = [];
  let size = 0;
  res.onData((chunk, isLast) => {
    if (aborted) return;
    // uWS reuses the chunk's memory after this callback: copy it.
    chunks.push(Buffer.from(Buffer.from(chunk)));
    size += chunk.byteLength;
    if (size > MAX_MESSAGE) {
      aborted = true;
      res.writeStatus('413 Payload Too Large').writeHeader('Connection', 'close').end();
      return;
    }
    if (!isLast) return;
    const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
    const subscribers = app.numSubscribers(channel);
    app.publish(channel, body, isBinary);
    res.cork(() => {
      res.writeStatus('200 OK')
        .writeHeader('Content-Type', 'application/json')
        .end(JSON.stringify({ channel, subscribers }));
    });
  });
});

admin.get('/healthz', (res) => {
  res.end('ok\n');
});

admin.any('/*', (res) => {
  res.writeStatus('404 Not Found').end('not found\n');
});

app.listen('0.0.0.0', port, (token) => {
  if (!token) {
    console.error(`uws-server: cannot listen on 0.0.0.0:${port}`);
    process.exit(1);
  }
  admin.listen('127.0.0.1', adminPort, (adminToken) => {
    if (!adminToken) {
      console.error(`uws-server: cannot listen on 127.0.0.1:${adminPort}`);
      process.exit(1);
    }
    console.error(`uws-server: pid ${process.pid} ws 0.0.0.0:${port} admin 127.0.0.1:${adminPort} (node ${process.version})`);
  });
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    console.error(`uws-server: ${sig}, exiting`);
    process.exit(0);
  });
}
