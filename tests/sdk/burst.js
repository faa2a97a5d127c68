// burst.js HOST:PORT SCOPE PREFIX N KEY [group]
// Registers devices PREFIX0..PREFIX{N-1} concurrently with the official device
// SDK (symmetric key; KEY is a group key when "group" is given, as in
// provision-symkey.js). Prints {"elapsedMs":..,"results":[{regid,ok,ms,
// status?,assignedHub?,error?,statusCode?}]} and exits 0 (1 only on usage errors).
'use strict';
const crypto = require('crypto');
const { Http } = require('azure-iot-provisioning-device-http');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { portAwareHttp, splitHostPort, describeError, finish } = require('./shim');

const [hostport, scope, prefix, nText, key, group] = process.argv.slice(2);
const n = Number(nText);
if (!hostport || !scope || !prefix || !(n > 0) || !key) {
  finish({ error: 'usage', message: 'burst.js HOST:PORT SCOPE PREFIX N KEY [group]' }, false);
} else {
  const t0 = Date.now();
  const one = (i) => new Promise((resolve) => {
    const regid = prefix + i;
    const devKey = group === 'group'
      ? crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(regid, 'utf8').digest('base64') : key;
    const transport = new Http(portAwareHttp('azure-iot-provisioning-device-http', hostport));
    const client = ProvisioningDeviceClient.create(splitHostPort(hostport).host, scope, transport,
      new SymmetricKeySecurityClient(regid, devKey));
    const start = Date.now();
    client.register((err, res) => {
      const r = { regid, ok: !err, ms: Date.now() - start };
      if (err) Object.assign(r, describeError(err));
      else { r.status = res.status; r.assignedHub = res.assignedHub; r.substatus = res.substatus; }
      resolve(r);
    });
  });
  Promise.all(Array.from({ length: n }, (_, i) => one(i)))
    .then((results) => finish({ elapsedMs: Date.now() - t0, results }, true));
}
