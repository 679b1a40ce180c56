FROM alpine

COPPY . /
