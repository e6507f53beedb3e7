#!/bin/sh
# A prestart step: runs before supervisord starts, as the stack's user.
set -eu
date +%s.%N > /srv/instance/prestart-ran
