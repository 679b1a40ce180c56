ARG REG=Registry.Example.com
FROM ${REG}/Team/App
