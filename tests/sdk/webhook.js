// webhook.js PORT LOGFILE [HUB]
// A custom allocation webhook (dps-wire.md §9) on http://127.0.0.1:PORT/alloc.
// Answers {iotHubHostName, payload: {echo: deviceRuntimeContext.payload}} where
// the hub is HUB when given and linkedHubs is non-empty and holds it, else the
// LAST of linkedHubs; appends every request ({method,url,headers,body}) as one
// JSON line to LOGFILE. Prints "listening on PORT" once ready.
'use strict';
const http = require('http');
const fs = require('fs');

const [port, logFile, wantHub] = process.argv.slice(2);
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let body = null;
    try { body = JSON.parse(text); } catch (e) { body = { unparsed: text }; }
    fs.appendFileSync(logFile, JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }) + '\n');
    if (req.method !== 'POST' || !req.url.startsWith('/alloc')) {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end('{"error":"not found"}');
      return;
    }
    const linked = (body && Array.isArray(body.linkedHubs)) ? body.linkedHubs : [];
    const hub = wantHub && linked.includes(wantHub) ? wantHub : linked[linked.length - 1];
    const ctx = (body && body.deviceRuntimeContext) || {};
    const answer = { iotHubHostName: hub, payload: { echo: ctx.payload === undefined ? null : ctx.payload } };
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(answer));
  });
});
server.listen(Number(port), '127.0.0.1', () => console.log('listening on ' + port));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
