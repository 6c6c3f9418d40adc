// The end-to-end auth tests' servers, in one Node process (tests/src/oauth.rs starts it):
//
// - a real OAuth 2.0 authorization server: `oidc-provider` (certified OpenID provider) with
//   the client_credentials grant, client authentication private_key_jwt (RS384, ES384),
//   client_secret_basic and client_secret_post, and JWT access tokens for the FHIR base URL
//   (RFC 8707 resource indicators, RFC 9068 tokens);
// - a FHIR front end that serves `<base>/.well-known/smart-configuration`, verifies each
//   request's bearer token against the provider's published JWKS (issuer, audience,
//   expiry, scope, revocation) or a static token, and forwards what it accepts to the
//   project's own test upstream over mutual TLS. It also publishes clients' key sets at
//   `/jwks/<name>` (`host_jwks`), the `jku` / `jwks_uri` the provider fetches them from.
//
// Both speak HTTPS with the test PKI's server certificate. The harness gives the settings as
// a JSON file (argv[2]); the process prints one JSON line `{"ready":true,...}` on stdout, then
// answers one JSON command per stdin line with one JSON line (see `command` below).

import fs from 'node:fs';
import https from 'node:https';
import readline from 'node:readline';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const tls = { cert: fs.readFileSync(cfg.tls.cert), key: fs.readFileSync(cfg.tls.key) };
const upstreamTls = {
  ca: fs.readFileSync(cfg.tls.ca),
  cert: fs.readFileSync(cfg.client.cert),
  key: fs.readFileSync(cfg.client.key),
};

// The provider's clock (and the front end's): shifted by `clock` commands.
let clockOffsetMs = 0;
const realNow = Date.now;
Date.now = () => realNow() + clockOffsetMs;

const SCOPES = 'system/Observation.c system/Device.c system/Patient.rs system/Observation.rs';
const state = {
  ttl: cfg.ttl ?? 600,
  audience: null, // set once the front end listens: its FHIR base URL
  tokenEndpointUp: true,
  revokedClients: new Set(),
  revokedJtis: new Set(),
  seenJtis: new Set(),
  staticTokens: new Set(cfg.static_tokens ?? []),
  hostedJwks: new Map(),
  stats: {
    token_requests: 0, token_refused: 0, fhir_ok: 0, fhir_401: 0, fhir_403: 0,
    discovery: 0, jwks_fetches: 0, reasons: [],
  },
};

// Clients live in the adapter, so they can be added and revoked while running.
const clients = new Map();
const stores = new Map();
class Adapter {
  constructor(name) {
    this.name = name;
    if (!stores.has(name)) stores.set(name, new Map());
    this.store = stores.get(name);
  }
  async upsert(id, payload) { this.store.set(id, payload); }
  async find(id) {
    if (this.name === 'Client') return clients.get(id);
    return this.store.get(id);
  }
  async findByUserCode() { return undefined; }
  async findByUid() { return undefined; }
  async consume(id) { const p = this.store.get(id); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { this.store.delete(id); }
  async revokeByGrantId() {}
}

const signing = await jose.generateKeyPair('RS256', { extractable: true });
const providerJwk = { ...(await jose.exportJWK(signing.privateKey)), kid: 'test-as-1', alg: 'RS256', use: 'sig' };

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

const asServer = https.createServer(tls);
const asPort = await listen(asServer);
const issuer = `https://127.0.0.1:${asPort}`;
const feServer = https.createServer(tls);
const fePort = await listen(feServer);
const fhirBase = `https://127.0.0.1:${fePort}/fhir`;
state.audience = fhirBase;

const provider = new Provider(issuer, {
  adapter: Adapter,
  // The provider fetches a client's jwks_uri; its guard against requests to special-use
  // addresses (a dispatcher that refuses them) would refuse the test's loopback host, so
  // the tests fetch without it (the test CA is trusted through NODE_EXTRA_CA_CERTS).
  fetch: (url, { dispatcher: _guard, ...options }) => globalThis.fetch(url, options),
  ttl: { ClientCredentials: () => state.ttl },
  jwks: { keys: [providerJwk] },
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
  enabledJWA: { clientAuthSigningAlgValues: ['RS384', 'ES384'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => fhirBase,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: SCOPES,
        audience: state.audience,
        accessTokenTTL: state.ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.on('grant.error', (_ctx, err) => { state.stats.token_refused += 1; state.stats.reasons.push(`${err.error}: ${err.error_description}`); });

const providerCallback = provider.callback();
asServer.on('request', (req, res) => {
  if (req.url.startsWith('/token')) {
    if (!state.tokenEndpointUp) { req.socket.destroy(); return; }
    state.stats.token_requests += 1;
  }
  providerCallback(req, res);
});

// The provider's published key set, read the way a resource server would.
function getJson(url) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca: upstreamTls.ca }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => { try { resolve(JSON.parse(body)); } catch (e) { reject(e); } });
    }).on('error', reject);
  });
}
const discovery = await getJson(`${issuer}/.well-known/openid-configuration`);
const jwks = jose.createLocalJWKSet(await getJson(discovery.jwks_uri));

function refuse(res, status, error, description) {
  if (status === 401) state.stats.fhir_401 += 1; else state.stats.fhir_403 += 1;
  state.stats.reasons.push(`${status} ${error}: ${description}`);
  res.writeHead(status, {
    'www-authenticate': `Bearer error="${error}", error_description="${description.replace(/"/g, "'")}"`,
    'content-type': 'application/fhir+json',
  });
  res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'security', diagnostics: description }] }));
}

async function authorize(req, res) {
  const header = req.headers.authorization ?? '';
  const m = /^Bearer (\S+)$/.exec(header);
  if (!m) { refuse(res, 401, 'invalid_request', 'no bearer token'); return false; }
  if (state.staticTokens.has(m[1])) return true;
  let payload;
  try {
    ({ payload } = await jose.jwtVerify(m[1], jwks, {
      issuer, audience: fhirBase, currentDate: new Date(Date.now()), typ: 'at+jwt',
    }));
  } catch (e) {
    refuse(res, 401, 'invalid_token', `${e.code ?? 'invalid'}: ${e.message}`);
    return false;
  }
  if (state.revokedClients.has(payload.client_id)) { refuse(res, 401, 'invalid_token', 'client revoked'); return false; }
  if (state.revokedJtis.has(payload.jti)) { refuse(res, 401, 'invalid_token', 'token revoked'); return false; }
  state.seenJtis.add(payload.jti);
  const scopes = new Set((payload.scope ?? '').split(' '));
  if (req.method === 'POST' && !scopes.has('system/Observation.c')) {
    refuse(res, 403, 'insufficient_scope', 'system/Observation.c not granted');
    return false;
  }
  return true;
}

function forward(req, res, body) {
  const url = new URL(cfg.upstream);
  const up = https.request({
    host: url.hostname, port: url.port, method: req.method, path: req.url,
    headers: {
      'content-type': req.headers['content-type'] ?? 'application/fhir+json',
      accept: req.headers.accept ?? 'application/fhir+json',
      'content-length': body.length,
    },
    ...upstreamTls,
  }, (upRes) => {
    res.writeHead(upRes.statusCode, { 'content-type': upRes.headers['content-type'] ?? 'application/fhir+json' });
    upRes.pipe(res);
  });
  up.on('error', () => { res.writeHead(502); res.end(); });
  up.end(body);
}

feServer.on('request', (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    if (req.url.startsWith('/jwks/')) {
      const set = state.hostedJwks.get(req.url.slice('/jwks/'.length));
      if (!set) { res.writeHead(404); res.end(); return; }
      state.stats.jwks_fetches += 1;
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
      res.end(JSON.stringify(set));
      return;
    }
    if (req.url === '/fhir/.well-known/smart-configuration') {
      state.stats.discovery += 1;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        issuer,
        jwks_uri: discovery.jwks_uri,
        token_endpoint: discovery.token_endpoint,
        token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
        token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
        grant_types_supported: ['client_credentials'],
        scopes_supported: SCOPES.split(' '),
        capabilities: ['client-confidential-asymmetric', 'permission-v2'],
      }));
      return;
    }
    if (!(await authorize(req, res))) return;
    state.stats.fhir_ok += 1;
    forward(req, res, body);
  });
});

function command(c) {
  switch (c.cmd) {
    case 'add_client': clients.set(c.client.client_id, c.client); return { ok: true };
    case 'revoke_client': clients.delete(c.client_id); state.revokedClients.add(c.client_id); return { ok: true };
    case 'restore_client': clients.set(c.client.client_id, c.client); state.revokedClients.delete(c.client.client_id); return { ok: true };
    case 'invalidate_tokens': for (const j of state.seenJtis) state.revokedJtis.add(j); return { ok: true, revoked: state.revokedJtis.size };
    case 'token_endpoint': state.tokenEndpointUp = !!c.up; return { ok: true };
    case 'audience': state.audience = c.value ?? fhirBase; return { ok: true };
    case 'clock': clockOffsetMs = c.offset_s * 1000; return { ok: true };
    case 'ttl': state.ttl = c.seconds; return { ok: true };
    case 'static_tokens': state.staticTokens = new Set(c.tokens ?? []); return { ok: true };
    case 'host_jwks': state.hostedJwks.set(c.name, c.jwks); return { ok: true, url: `https://127.0.0.1:${fePort}/jwks/${c.name}` };
    case 'stats': return { ok: true, ...state.stats, reasons: state.stats.reasons.slice(-5) };
    default: return { ok: false, error: `unknown command ${c.cmd}` };
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let answer;
  try { answer = command(JSON.parse(line)); } catch (e) { answer = { ok: false, error: String(e) }; }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}).on('close', () => process.exit(0));

process.stdout.write(`${JSON.stringify({ ready: true, issuer, token_endpoint: discovery.token_endpoint, fhir: fhirBase })}\n`);
