# Old name of bridge.telephony.leg: removed once the other branches land (they still import it).
from bridge.telephony.leg import *  # noqa: F403
