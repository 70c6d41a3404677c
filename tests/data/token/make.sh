#!/bin/sh
# Regenerates the golden token vectors with OpenSSL only, independently of Portico's code.
# See README.md. Run from this directory; needs openssl >= 3.0 and python3.
set -eu
umask 077
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out probe-key.pkcs8.pem
openssl rsa -in probe-key.pkcs8.pem -traditional -out probe-key.pkcs1.pem
openssl req -x509 -new -key probe-key.pkcs8.pem -sha256 -days 36500 \
  -subj "/CN=portico golden test signer" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=clientAuth" \
  -out probe-cert.pem
chmod 644 probe-key.pkcs8.pem probe-key.pkcs1.pem probe-cert.pem

THUMB=$(openssl x509 -in probe-cert.pem -noout -fingerprint -sha1 | sed 's/.*=//; s/://g')
esc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read().strip(), safe=""), end="")'; }

# now = 1900000000, ttl = 60.
M="Host=hv01.lab.test&Port=2179&ExpiresOn=1900000060"
SIG=$(printf %s "$M" | openssl dgst -sha256 -sign probe-key.pkcs8.pem | base64 -w0 | esc)
printf '%s' "$M&Signature=1|SHA256|$THUMB|$SIG" > token-pkcs1-sha256.txt

SIG=$(printf %s "$M" | openssl dgst -sha512 -sign probe-key.pkcs8.pem \
  -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest | base64 -w0 | esc)
printf '%s' "$M&Signature=1|SHA512|$THUMB|$SIG" > token-pss-sha512.txt
chmod 644 token-pkcs1-sha256.txt token-pss-sha512.txt
