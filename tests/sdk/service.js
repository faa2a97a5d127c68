// service.js CONNSTRING COMMAND JSONARGS
// One call of the official provisioning service SDK (azure-iot-provisioning-service)
// through the port shim. Prints {"statusCode":..,"body":..} (exit 0) or
// {error,name,message,statusCode,responseBody} (exit 1).
//
//   createOrUpdateEnrollmentGroup        JSONARGS = the EnrollmentGroup
//   createOrUpdateIndividualEnrollment   JSONARGS = the IndividualEnrollment
//   getEnrollmentGroup | getIndividualEnrollment | getDeviceRegistrationState
//                                        JSONARGS = {"id":..}
//   deleteEnrollmentGroup | deleteIndividualEnrollment | deleteDeviceRegistrationState
//                                        JSONARGS = {"id":..,"etag"?:..}
//   queryEnrollmentGroups | queryIndividualEnrollments
//                                        JSONARGS = {"pageSize"?:n,"query"?:".."}: follows
//                                        every continuation; body = {"pages":[[ids..]..],"items":[..]}
'use strict';
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { portAwareHttp, describeError, finish } = require('./shim');

const [conn, command, argsText] = process.argv.slice(2);

function hostOf(cs) {
  const m = /(?:^|;)HostName=([^;]+)/.exec(cs || '');
  return m ? m[1] : '';
}

function nextPage(q, token) {
  return new Promise((resolve, reject) => {
    const cb = (err, result, response) => err ? reject(err) : resolve({ result, response });
    if (token) q.next(token, cb); else q.next(cb);
  });
}

async function queryAll(q, idField) {
  const pages = [], items = [];
  let guard = 0;
  do {
    const p = await nextPage(q, q.continuationToken);
    pages.push(p.result.map((x) => x[idField]));
    items.push(...p.result);
    if (++guard > 1000) throw new Error('query did not end after 1000 pages');
  } while (q.hasMoreResults);
  return { pages, items };
}

async function run(client, cmd, a) {
  // delete* resolve with nothing: the SDK hands no result for them
  const ok = (r) => (r ? { statusCode: r.httpResponse ? r.httpResponse.statusCode : undefined, body: r.responseBody === undefined ? null : r.responseBody } : { statusCode: null, body: null });
  switch (cmd) {
  case 'createOrUpdateEnrollmentGroup': return ok(await client.createOrUpdateEnrollmentGroup(a));
  case 'createOrUpdateIndividualEnrollment': return ok(await client.createOrUpdateIndividualEnrollment(a));
  case 'getEnrollmentGroup': return ok(await client.getEnrollmentGroup(a.id));
  case 'getIndividualEnrollment': return ok(await client.getIndividualEnrollment(a.id));
  case 'getDeviceRegistrationState': return ok(await client.getDeviceRegistrationState(a.id));
  case 'deleteEnrollmentGroup':
    return ok(a.etag ? await client.deleteEnrollmentGroup(a.id, a.etag) : await client.deleteEnrollmentGroup(a.id));
  case 'deleteIndividualEnrollment':
    return ok(a.etag ? await client.deleteIndividualEnrollment(a.id, a.etag) : await client.deleteIndividualEnrollment(a.id));
  case 'deleteDeviceRegistrationState':
    return ok(a.etag ? await client.deleteDeviceRegistrationState(a.id, a.etag) : await client.deleteDeviceRegistrationState(a.id));
  case 'queryEnrollmentGroups':
    return { statusCode: 200, body: await queryAll(client.createEnrollmentGroupQuery({ query: a.query || 'SELECT * FROM enrollmentGroups' }, a.pageSize), 'enrollmentGroupId') };
  case 'queryIndividualEnrollments':
    return { statusCode: 200, body: await queryAll(client.createIndividualEnrollmentQuery({ query: a.query || 'SELECT * FROM enrollments' }, a.pageSize), 'registrationId') };
  default: throw Object.assign(new Error('unknown command ' + cmd), { name: 'usage' });
  }
}

let args;
try { args = JSON.parse(argsText || '{}'); } catch (e) { finish({ error: 'usage', message: 'JSONARGS: ' + e.message }, false); return; }
const client = ProvisioningServiceClient.fromConnectionString(conn);
client._restApiClient._http = portAwareHttp('azure-iot-provisioning-service', hostOf(conn));
run(client, command, args).then((r) => finish(r, true), (e) => finish(describeError(e), false));
