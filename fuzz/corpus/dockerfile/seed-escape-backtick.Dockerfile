# escape=`
ARG R=reg.io:5000
FROM ${R}/base:1 `
  AS x
COPY `
  a b
