// provision-x509.js HOST:PORT SCOPE REGID CERT.pem KEY.pem [payloadJson]
// Registers one device with the official device SDK and X509Security: the
// certificate (PEM, may hold a chain) is presented in the TLS handshake.
// Prints the registrationState (exit 0) or {error,name,message,statusCode,...} (exit 1).
'use strict';
const fs = require('fs');
const { Http } = require('azure-iot-provisioning-device-http');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { X509Security } = require('azure-iot-security-x509');
const { portAwareHttp, splitHostPort, describeError, finish } = require('./shim');

const [hostport, scope, regid, certFile, keyFile, payload] = process.argv.slice(2);
if (!hostport || !scope || !regid || !certFile || !keyFile) {
  finish({ error: 'usage', message: 'provision-x509.js HOST:PORT SCOPE REGID CERT.pem KEY.pem [payloadJson]' }, false);
} else {
  const cert = { cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8') };
  const transport = new Http(portAwareHttp('azure-iot-provisioning-device-http', hostport));
  const client = ProvisioningDeviceClient.create(splitHostPort(hostport).host, scope, transport,
    new X509Security(regid, cert));
  if (payload) client.setProvisioningPayload(JSON.parse(payload));
  client.register((err, res) => err ? finish(describeError(err), false) : finish(res, true));
}
