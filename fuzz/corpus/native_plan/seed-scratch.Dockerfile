FROM scratch
COPY hello.txt /
CMD ["/hello"]
HEALTHCHECK NONE
