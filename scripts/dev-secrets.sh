#!/bin/sh
# Development credentials for memscore's TLS and tokens, with openssl only:
#   scripts/dev-secrets.sh DIR
# writes, each only if it is not there yet (running it again changes nothing):
#   DIR/ca.pem, DIR/ca.key          a development CA (10 years)
#   DIR/server.pem, DIR/server.key  the servers' certificate, signed by it, for localhost,
#                                   127.0.0.1, gateway, results and the k8s service names
#   DIR/token                       a random bearer token (mode 600)
#   DIR/tokens                      the MEMSCORE_AUTH_TOKENS file: "dev <sha256 of the token>"
# Not for production: there, certificates come from your CA (or cert-manager) and tokens
# from your secret store.
set -eu
dir=${1:?usage: dev-secrets.sh DIR}
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 3650 -subj "/CN=memscore development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "wrote $dir/ca.pem"
fi

if [ ! -f server.pem ] || [ ! -f server.key ]; then
  san="DNS:localhost,DNS:gateway,DNS:results,DNS:memscore-gateway,DNS:memscore-results"
  san="$san,DNS:*.memscore.svc,DNS:*.memscore.svc.cluster.local,IP:127.0.0.1"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj "/CN=memscore" 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 825 -extfile server.ext 2>/dev/null
  rm -f server.csr server.ext ca.srl
  chmod 644 server.pem ca.pem
  chmod 640 server.key
  echo "wrote $dir/server.pem"
fi

if [ ! -f token ]; then
  openssl rand -hex 24 > token
  chmod 600 token
  echo "wrote $dir/token"
fi
if [ ! -f tokens ]; then
  printf 'dev %s\n' "$(printf %s "$(cat token)" | openssl dgst -sha256 -r | cut -d' ' -f1)" > tokens
  chmod 644 tokens
  echo "wrote $dir/tokens"
fi

echo "clients: export MEMSCORE_TLS_CA=$(pwd)/ca.pem MEMSCORE_TOKEN=\$(cat $(pwd)/token)"
