#!/usr/bin/env bash
# Install the real mail peers the test suite talks to on loopback (Debian/Ubuntu packages):
#   dovecot-imapd  the IMAP server the IMAP poller tests read from (started per test, never as a system service)
#   openssl        self-signed certificates for IMAPS
#   swaks          a real SMTP client for end-to-end checks
#   chromium       a real headless browser for the web pages' XSS test and screenshots (tests/browser)
#   fonts-dejavu-core  a font for that browser to render text with
#   s-nail         a real mail client whose thread view must put an answer under the question it answers
#   postfix        the MTA in front of two gateway nodes in the production test (started per test from its own
#                  config directory, never as a system service)
# Idempotent: installs only what is missing. As root it installs; as another user it only reports, and the tests
# that need a missing peer skip with a message naming this script. Always exits 0 unless an install fails.
# On a systemd host the packages also enable the system Dovecot (143/993) and Postfix (25); the tests never use them.
set -euo pipefail

PACKAGES=(dovecot-imapd openssl swaks chromium fonts-dejavu-core s-nail postfix)

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-test-peers: not a Debian-based system; install ${PACKAGES[*]} yourself (the tests that need them skip)"
  exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-peers: already installed: ${PACKAGES[*]}"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-test-peers: missing ${missing[*]}; run this script as root to install them (the tests that need them skip)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-peers: apt-get not found; install ${missing[*]} yourself (the tests that need them skip)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -q -o DPkg::Lock::Timeout=300)
echo "install-test-peers: installing ${missing[*]}"
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends "${missing[@]}"
echo "install-test-peers: installed ${missing[*]}"
