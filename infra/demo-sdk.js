// infra/demo-sdk.js - approach 1 end to end with the official Azure IoT DPS
// device SDK for Node, as infra/demo runs it:
//
//   node infra/demo-sdk.js CONTROLPLANE_URL TENANT ENROLLMENT_KEY REGID...
//
// For each registration id: the device derives its key from the tenant's
// enrollment (group) key, asks the control plane where to provision
// (POST /v1/tenants/{t}/registrations/{r}/locate with its SAS token), then
// registers at that stamp's DPS endpoint with the stock SDK (symmetric key,
// HTTPS transport) and prints the hub the stamp assigned.  Prints one JSON
// line per device; exits 0 only if every device was assigned a hub.
//
// The SDK packages are loaded from STACK_NODE_DIR (default .stack/node, where
// infra/demo installs them).  The stamp's certificate is trusted through
// NODE_EXTRA_CA_CERTS (the stack's CA, STACK_CA_FILE).  The stock SDK only
// talks to port 443 of a bare host name, so a port shim subclasses
// azure-iot-http-base's Http and hands https.request the endpoint's port.
'use strict';
const crypto = require('crypto');
const http = require('http');
const https = require('https');
const path = require('path');
const { createRequire } = require('module');

const nodeDir = path.resolve(process.env.STACK_NODE_DIR || path.join(__dirname, '..', '.stack', 'node'));
const req = createRequire(path.join(nodeDir, 'package.json'));
const { Http } = req('azure-iot-provisioning-device-http');
const { ProvisioningDeviceClient } = req('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = req('azure-iot-security-symmetric-key');

function splitHostPort(hostport) {
  const i = hostport.lastIndexOf(':');
  if (i < 0) return { host: hostport, port: 443 };
  return { host: hostport.slice(0, i), port: Number(hostport.slice(i + 1)) };
}

// The port shim: the azure-iot-http-base copy the device transport itself loads.
function portAwareHttp(hostport) {
  const dir = path.dirname(req.resolve('azure-iot-provisioning-device-http/package.json'));
  const { Http: HttpBase } = req(req.resolve('azure-iot-http-base', { paths: [dir] }));
  const { host, port } = splitHostPort(hostport);
  class PortAwareHttp extends HttpBase {
    buildRequest(method, reqPath, headers, _host, options, done) {
      if (!done && typeof options === 'function') { done = options; options = undefined; }
      return super.buildRequest(method, reqPath, headers, host, {
        port,
        request: (o, cb) => { o.port = port; return https.request(o, cb); },
      }, done);
    }
  }
  return new PortAwareHttp();
}

const b64hmac = (keyB64, msg) =>
  crypto.createHmac('sha256', Buffer.from(keyB64, 'base64')).update(msg, 'utf8').digest('base64');

// POST /v1/tenants/{t}/registrations/{r}/locate with the device's SAS token.
function locate(cpUrl, tenant, regid, deviceKey) {
  const sr = encodeURIComponent(`${tenant}/registrations/${regid}`);   // signed as sent
  const se = Math.floor(Date.now() / 1000) + 3600;
  const sig = encodeURIComponent(b64hmac(deviceKey, `${sr}\n${se}`));
  const auth = `SharedAccessSignature sr=${sr}&sig=${sig}&se=${se}&skn=registration`;
  const url = new URL(`/v1/tenants/${encodeURIComponent(tenant)}/registrations/${encodeURIComponent(regid)}/locate`, cpUrl);
  return new Promise((resolve, reject) => {
    // https (the stack's default) trusts the stack CA through NODE_EXTRA_CA_CERTS
    const r = (url.protocol === 'https:' ? https : http).request(url, { method: 'POST', headers: { Authorization: auth, Accept: 'application/json' }, timeout: 10000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        let doc;
        try { doc = JSON.parse(body); } catch (e) { doc = body; }
        if (res.statusCode === 200) resolve(doc);
        else reject(new Error(`locate: HTTP ${res.statusCode} ${JSON.stringify(doc)}`));
      });
    });
    r.on('timeout', () => r.destroy(new Error('locate: timeout')));
    r.on('error', reject);
    r.end();
  });
}

function register(dpsEndpoint, idScope, regid, deviceKey) {
  const transport = new Http(portAwareHttp(dpsEndpoint));
  const client = ProvisioningDeviceClient.create(splitHostPort(dpsEndpoint).host, idScope, transport,
    new SymmetricKeySecurityClient(regid, deviceKey));
  return new Promise((resolve, reject) => client.register((err, res) => (err ? reject(err) : resolve(res))));
}

function describe(err) {
  const out = { error: (err && err.name) || 'Error', message: err && err.message };
  if (err && err.response && err.response.statusCode) out.statusCode = err.response.statusCode;
  if (err && err.responseBody !== undefined) out.responseBody = err.responseBody;
  return out;
}

async function main() {
  const [cpUrl, tenant, groupKey, ...regids] = process.argv.slice(2);
  if (!cpUrl || !tenant || !groupKey || regids.length === 0) {
    console.error('usage: demo-sdk.js CONTROLPLANE_URL TENANT ENROLLMENT_KEY REGID...');
    return 2;
  }
  let failed = 0;
  for (const regid of regids) {
    const deviceKey = b64hmac(groupKey, regid);
    const line = { registrationId: regid };
    try {
      const loc = await locate(cpUrl, tenant, regid, deviceKey);
      Object.assign(line, { stamp: loc.stamp, dpsEndpoint: loc.dpsEndpoint, idScope: loc.idScope });
      const res = await register(loc.dpsEndpoint, loc.idScope, regid, deviceKey);
      Object.assign(line, { status: res.status, assignedHub: res.assignedHub, deviceId: res.deviceId });
      if (res.status !== 'assigned' || !res.assignedHub) failed++;
    } catch (err) {
      Object.assign(line, describe(err));
      failed++;
    }
    console.log(JSON.stringify(line));
  }
  return failed ? 1 : 0;
}

main().then((rc) => { process.exitCode = rc; }, (err) => { console.error(err); process.exitCode = 1; });
