// A real OpenID provider for the tests: the npm package oauth2-mock-server (discovery, JWKS, signed JWTs),
// driven here so a test can choose a token's claims and lifetime and rotate the signing keys.
// Usage: node provider.mjs PATH/TO/oauth2-mock-server/dist/index.mjs
// Prints the issuer URL on its first line. POST /token takes two extra form fields:
// claims (a JSON object merged into the payload) and ttl (seconds until exp; negative: already expired).
// A line "rotate" on stdin adds a new signing key and prints "rotated KID".
import { pathToFileURL } from "node:url";
import { createInterface } from "node:readline";

// Sign-in (authorization code): /authorize has no login form; a test names who signs in with two extra query
// fields, claims (JSON merged into the tokens issued for that code, e.g. sub and groups; it may also override
// iss, aud or nonce) and ttl. With foreign=1 the ID token for that code is signed by a key never published.
const { OAuth2Server, OAuth2Issuer } = await import(pathToFileURL(process.argv[2]).href);
const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
const signIns = new Map(); // code -> {claims, ttl, foreign}
const foreign = new OAuth2Issuer();
await foreign.keys.generate("RS256");

function apply(payload, claims, ttl) {
  if (typeof claims === "string") Object.assign(payload, JSON.parse(claims));
  if (typeof ttl === "string") {
    const now = Math.floor(Date.now() / 1000);
    payload.exp = now + Number(ttl);
    payload.iat = Math.min(payload.iat, payload.exp - 60);
    payload.nbf = Math.min(payload.nbf, payload.exp - 60);
  }
}
server.service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const code = redirect.url.searchParams.get("code");
  if (!code) return;
  const signIn = { claims: req.query.claims, ttl: req.query.ttl, foreign: null };
  signIns.set(code, signIn);
  if (req.query.foreign === "1") {
    // Signed now (signing is async, the token response is not): every right claim, under an unpublished key
    // that claims the provider's kid.
    foreign.url = server.issuer.url;
    const kid = server.issuer.keys.toJSON()[0].kid;
    foreign.once("beforeSigning", (t) => {
      Object.assign(t.payload, { sub: "johndoe", aud: req.query.client_id, nonce: req.query.nonce });
      apply(t.payload, signIn.claims, signIn.ttl);
      t.header.kid = kid;
    });
    foreign.buildToken({}).then((jwt) => { signIn.foreign = jwt; });
  }
});
server.service.on("beforeTokenSigning", (token, req) => {
  const body = req.body ?? {};
  apply(token.payload, body.claims, body.ttl);
  const signIn = signIns.get(body.code);
  if (signIn) apply(token.payload, signIn.claims, signIn.ttl);
});
server.service.on("beforeResponse", (response, req) => {
  const signIn = signIns.get((req.body ?? {}).code);
  if (signIn && signIn.foreign && response.body.id_token) response.body.id_token = signIn.foreign;
});
await server.start(0, "127.0.0.1");
console.log(server.issuer.url);
createInterface({ input: process.stdin }).on("line", async (line) => {
  if (line.trim() === "rotate") {
    const key = await server.issuer.keys.generate("RS256");
    console.log(`rotated ${key.kid}`);
  }
});
process.stdin.on("end", () => server.stop().then(() => process.exit(0)));
