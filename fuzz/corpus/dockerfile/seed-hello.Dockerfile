FROM 127.0.0.1:5000/base:latest
COPY hello.txt /hello.txt
CMD ["/bin/busybox", "cat", "/hello.txt"]
