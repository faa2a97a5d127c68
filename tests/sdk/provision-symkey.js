// provision-symkey.js HOST:PORT SCOPE REGID KEY [group] [payloadJson]
// Registers one device with the official device SDK (symmetric key). With a
// 5th argument "group" (or "1"), KEY is the enrollment group key and the
// device key is derived from it (HMAC-SHA256(groupKey, regid), dps-wire.md §4.2).
// Prints the registrationState (exit 0) or {error,name,message,statusCode,...} (exit 1).
'use strict';
const crypto = require('crypto');
const { Http } = require('azure-iot-provisioning-device-http');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { portAwareHttp, splitHostPort, describeError, finish } = require('./shim');

const [hostport, scope, regid, key, group, payload] = process.argv.slice(2);
if (!hostport || !scope || !regid || !key) {
  finish({ error: 'usage', message: 'provision-symkey.js HOST:PORT SCOPE REGID KEY [group] [payloadJson]' }, false);
} else {
  let devKey = key;
  if (group === 'group' || group === '1')
    devKey = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(regid, 'utf8').digest('base64');
  const transport = new Http(portAwareHttp('azure-iot-provisioning-device-http', hostport));
  const client = ProvisioningDeviceClient.create(splitHostPort(hostport).host, scope, transport,
    new SymmetricKeySecurityClient(regid, devKey));
  if (payload) client.setProvisioningPayload(JSON.parse(payload));
  client.register((err, res) => err ? finish(describeError(err), false) : finish(res, true));
}
