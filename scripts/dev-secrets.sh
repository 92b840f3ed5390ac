#!/bin/sh
# Development credentials for memscore's TLS and tokens, with openssl only:
#   scripts/dev-secrets.sh DIR
# writes into DIR, each file only if it is not there yet (a second run changes nothing):
#   ca.pem, ca.key          a development CA (10 years)
#   server.pem, server.key  the servers' certificate, signed by that CA, for localhost, 127.0.0.1,
#                           gateway, results (compose) and memscore-gateway, memscore-results,
#                           *.memscore.svc[.cluster.local] (k8s)
#   token                   a random bearer token for the tenant "dev" (mode 600)
#   tokens                  the MEMSCORE_AUTH_TOKENS file: "dev <sha256 hex of the token>"
# docker-compose.yml runs it (the `secrets` service); docs/deploy.md shows how to turn its files
# into the k8s Secrets memscore-tls and memscore-auth. Not for production: there, certificates
# come from your CA or cert-manager and tokens from your secret store.
set -eu
dir=${1:?usage: dev-secrets.sh DIR}
mkdir -p "$dir"
cd "$dir"
dir=$(pwd)
umask 077

# openssl's own output only when it fails
quiet() {
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key.tmp -out ca.pem.tmp -days 3650 -subj "/CN=memscore development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  chmod 644 ca.pem.tmp
  mv ca.key.tmp ca.key
  mv ca.pem.tmp ca.pem
  rm -f server.pem  # a certificate from an earlier CA would not verify with this one
  echo "wrote $dir/ca.pem and ca.key (development CA)"
fi

if [ ! -f server.pem ] || [ ! -f server.key ]; then
  san="DNS:localhost,DNS:gateway,DNS:results,DNS:memscore-gateway,DNS:memscore-results"
  san="$san,DNS:*.memscore.svc,DNS:*.memscore.svc.cluster.local,IP:127.0.0.1"
  printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > server.ext
  quiet openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key.tmp -out server.csr -subj "/CN=memscore"
  quiet openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days 825 -extfile server.ext -out server.pem.tmp
  rm -f server.csr server.ext
  chmod 640 server.key.tmp
  chmod 644 server.pem.tmp
  mv server.key.tmp server.key
  mv server.pem.tmp server.pem
  echo "wrote $dir/server.pem and server.key (for $san)"
fi

if [ ! -f token ]; then
  openssl rand -hex 24 > token.tmp
  mv token.tmp token
  echo "wrote $dir/token (tenant dev)"
fi

# The token's line; other tenants' lines (added by hand) are kept.
line="dev $(printf %s "$(cat token)" | openssl dgst -sha256 -r | cut -d' ' -f1)"
if ! grep -qxF "$line" tokens 2>/dev/null; then
  { grep -v '^dev ' tokens 2>/dev/null || true; echo "$line"; } > tokens.tmp
  chmod 644 tokens.tmp
  mv tokens.tmp tokens
  echo "wrote $dir/tokens (MEMSCORE_AUTH_TOKENS)"
fi

echo "servers: MEMSCORE_TLS_CERT=$dir/server.pem MEMSCORE_TLS_KEY=$dir/server.key MEMSCORE_AUTH_TOKENS=$dir/tokens"
echo "clients: export MEMSCORE_TLS_CA=$dir/ca.pem MEMSCORE_TOKEN=\$(cat $dir/token)"
