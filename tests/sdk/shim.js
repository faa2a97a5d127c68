// shim.js - the port shim of dps-wire.md §7.1(a): the stock SDKs only talk
// HTTPS to port 443 of a bare host name, so subclass azure-iot-http-base's Http
// and hand https.request the port (and, for X.509, the client certificate).
// The CA of the test's server is trusted through NODE_EXTRA_CA_CERTS (§7.2),
// which the C test sets in the environment of every node process.
'use strict';
const https = require('https');
const path = require('path');

// The azure-iot-http-base copy a package itself loads (npm may nest one per package).
function httpBaseOf(pkg) {
  const dir = path.dirname(require.resolve(pkg + '/package.json'));
  return require(require.resolve('azure-iot-http-base', { paths: [dir] }));
}

function splitHostPort(hostport) {
  const i = hostport.lastIndexOf(':');
  if (i < 0) return { host: hostport, port: 443 };
  return { host: hostport.slice(0, i), port: Number(hostport.slice(i + 1)) };
}

function portAwareHttp(pkg, hostport) {
  const { Http: HttpBase } = httpBaseOf(pkg);
  const { host, port } = splitHostPort(hostport);
  class PortAwareHttp extends HttpBase {
    buildRequest(method, reqPath, headers, _host, options, done) {
      if (!done && typeof options === 'function') { done = options; options = undefined; }
      const x509 = options;   // the device transport passes the X.509 credentials here
      return super.buildRequest(method, reqPath, headers, host, {
        port,
        request: (o, cb) => {
          o.port = port;
          if (x509 && x509.cert) { o.cert = x509.cert; o.key = x509.key; if (x509.passphrase) o.passphrase = x509.passphrase; }
          return https.request(o, cb);
        },
      }, done);
    }
  }
  return new PortAwareHttp();
}

// The same for a service whose host name does not resolve (an IoT hub of the
// stamp): connect to connectHostport ("127.0.0.1:PORT"), verify the server's
// certificate for "localhost" (the test certificate's DNS name; verification
// stays on) and send Host: <hubHost>, as a client of a hub behind a DNS name
// would.
function hubAwareHttp(pkg, connectHostport, hubHost) {
  const { Http: HttpBase } = httpBaseOf(pkg);
  const { host, port } = splitHostPort(connectHostport);
  class HubAwareHttp extends HttpBase {
    buildRequest(method, reqPath, headers, _host, options, done) {
      if (!done && typeof options === 'function') { done = options; options = undefined; }
      return super.buildRequest(method, reqPath, headers, hubHost, {
        port,
        request: (o, cb) => {
          o.host = host;
          o.hostname = host;
          o.port = port;
          o.servername = 'localhost';
          o.headers = Object.assign({}, o.headers, { Host: hubHost });
          return https.request(o, cb);
        },
      }, done);
    }
  }
  return new HubAwareHttp();
}

// What a script prints for an SDK error: {error, name, message, statusCode, responseBody, result}.
function describeError(err) {
  const out = {
    error: (err && err.constructor && err.constructor.name) || 'Error',
    name: err && err.name,
    message: err && err.message,
  };
  const resp = err && err.response;
  if (resp && resp.statusCode) out.statusCode = resp.statusCode;
  if (err && err.code) out.code = err.code;
  if (err && err.responseBody !== undefined) {
    let b = err.responseBody;
    if (typeof b === 'string') { try { b = JSON.parse(b); } catch (e) { /* keep the text */ } }
    out.responseBody = b;
  }
  if (err && err.result !== undefined) out.result = err.result;
  return out;
}

function finish(obj, ok) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(ok ? 0 : 1));
}

module.exports = { portAwareHttp, hubAwareHttp, splitHostPort, describeError, finish };
