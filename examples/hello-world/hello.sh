#!/bin/sh
cat /etc/motd
echo "hello from the image-builder demo"
