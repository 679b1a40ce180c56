# escape=`

FROM mcr.microsoft.com/windows/servercore:ltsc2022 `
    AS base
COPY app C:\app
FROM base
