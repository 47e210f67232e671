#!/usr/bin/env bash
# The browser tests (tests/test_view_browser.py) drive headless Chromium through selenium. Make sure
# Debian's chromium and chromium-driver are installed; install them with apt when they are missing.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
	exit 0
fi
if ! command -v apt-get >/dev/null; then
	echo "ensure_browser: chromium and chromedriver are missing and apt-get is not here; install Chromium and its driver (chromium, chromium-driver) by hand" >&2
	exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if ! command -v sudo >/dev/null; then
		echo "ensure_browser: chromium and chromedriver are missing; run as root (or install sudo): apt-get install -y chromium chromium-driver" >&2
		exit 1
	fi
	SUDO="sudo"
fi
echo "ensure_browser: installing chromium and chromium-driver with apt-get (for the browser tests)"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get install -y -q chromium chromium-driver >/dev/null ||
	{ $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }; then
	echo "ensure_browser: apt-get could not install chromium and chromium-driver; install them by hand" >&2
	exit 1
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null
