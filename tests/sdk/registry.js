// registry.js CONNECT HUBCONNSTRING COMMAND JSONARGS
// One call of the official IoT Hub service SDK's Registry (azure-iothub)
// against the stamp's hub registry. CONNECT is the stamp's "127.0.0.1:PORT";
// the connection string names the hub (HostName=<hub host>), whose name does
// not resolve: the shim connects to CONNECT, checks TLS against "localhost"
// (the test certificate's name) and sends Host: <hub host> (hubAwareHttp).
// Prints {"statusCode":..,"body":<the Device>} (exit 0) or
// {error,name,message,statusCode,responseBody} (exit 1).
//
//   get | delete          JSONARGS = {"id":..}
//   create | update       JSONARGS = the device description
//   disable               JSONARGS = {"id":..}: get, then update with status "disabled"
'use strict';
const { Registry } = require('azure-iothub');
const { hubAwareHttp, describeError, finish } = require('./shim');

const [connect, conn, command, argsText] = process.argv.slice(2);

function hostOf(cs) {
  const m = /(?:^|;)HostName=([^;]+)/.exec(cs || '');
  return m ? m[1] : '';
}

function ok(r) {
  if (!r) return { statusCode: null, body: null };
  const body = r.responseBody === undefined || r.responseBody === null ? null : JSON.parse(JSON.stringify(r.responseBody));
  return { statusCode: r.httpResponse ? r.httpResponse.statusCode : undefined, body };
}

async function run(registry, cmd, a) {
  switch (cmd) {
  case 'get': return ok(await registry.get(a.id));
  case 'create': return ok(await registry.create(a));
  case 'update': return ok(await registry.update(a));
  case 'delete': return ok(await registry.delete(a.id));
  case 'disable': {
    const got = await registry.get(a.id);
    const dev = got.responseBody;
    dev.status = 'disabled';
    if (a.statusReason) dev.statusReason = a.statusReason;
    return ok(await registry.update(dev));
  }
  default: throw Object.assign(new Error('unknown command ' + cmd), { name: 'usage' });
  }
}

let args;
try { args = JSON.parse(argsText || '{}'); } catch (e) { finish({ error: 'usage', message: 'JSONARGS: ' + e.message }, false); return; }
const registry = Registry.fromConnectionString(conn);
registry._restApiClient._http = hubAwareHttp('azure-iothub', connect, hostOf(conn));
run(registry, command, args).then((r) => finish(r, true), (e) => finish(describeError(e), false));
