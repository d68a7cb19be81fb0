# The SIP dispatcher in front of the bridges (deploy/kamailio/dispatcher.cfg; deploy/k8s/sip.yaml).
#   docker build -f docker/kamailio.Dockerfile -t ivr-bridge-kamailio .
#   docker run --network host ivr-bridge-kamailio -DD -E -A 'DISPATCHER_LIST="/etc/kamailio/dispatcher.list"'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends kamailio \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/kamailio/dispatcher.cfg /etc/kamailio/dispatcher.cfg
COPY deploy/kamailio/dispatcher.list /etc/kamailio/dispatcher.list
ENTRYPOINT ["kamailio", "-f", "/etc/kamailio/dispatcher.cfg"]
CMD ["-DD", "-E"]
