# fastterm production image: build the wheel against Debian's OpenSSL, run it slim.
#   docker build -t fastterm .
#   docker run -p 443:443 -p 80:80 -v /etc/fastterm:/etc/fastterm:ro fastterm
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev libnghttp2-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ext
COPY fastterm fastterm
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libnghttp2-14 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The master binds 443/80 and forks the workers; the config names the certificates.
EXPOSE 443 80
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastterm"]
CMD ["run", "-c", "/etc/fastterm/fastterm.toml"]
