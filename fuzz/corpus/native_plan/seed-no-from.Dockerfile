# only comments
ARG X=1
