// A real OpenID provider for the tests: the npm package oauth2-mock-server (discovery, JWKS, signed JWTs),
// driven here so a test can choose a token's claims and lifetime and rotate the signing keys.
// Usage: node provider.mjs PATH/TO/oauth2-mock-server/dist/index.mjs
// Prints the issuer URL on its first line. POST /token takes two extra form fields:
// claims (a JSON object merged into the payload) and ttl (seconds until exp; negative: already expired).
// A line "rotate" on stdin adds a new signing key and prints "rotated KID".
import { pathToFileURL } from "node:url";
import { createInterface } from "node:readline";

const { OAuth2Server } = await import(pathToFileURL(process.argv[2]).href);
const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeTokenSigning", (token, req) => {
  const body = req.body ?? {};
  if (typeof body.claims === "string") Object.assign(token.payload, JSON.parse(body.claims));
  if (typeof body.ttl === "string") {
    const now = Math.floor(Date.now() / 1000);
    token.payload.exp = now + Number(body.ttl);
    token.payload.iat = Math.min(token.payload.iat, token.payload.exp - 60);
    token.payload.nbf = Math.min(token.payload.nbf, token.payload.exp - 60);
  }
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
