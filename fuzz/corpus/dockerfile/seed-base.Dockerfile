# A tiny base image for the walk-through: busybox plus a marker file.
FROM scratch
COPY busybox /bin/busybox
COPY marker /marker
CMD ["/bin/busybox", "sh"]
