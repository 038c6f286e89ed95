"""The protocol's size limits: one home for the numbers both sides enforce.

The prover refuses requests beyond them (``prover.session``), the verifier's planner refuses
options that would need more (``verifier.planning``), and docs/protocol.md and
docs/transport-security.md quote them. An honest verifier at any accepted option stays within
every one of them, so a refusal on these grounds is never an honest run's fate.
"""

from __future__ import annotations

#: Coupled tuples (4 challenge members each) that all rounds of one session may cover.
MAX_SESSION_TUPLES = 5_000_000
#: Models of the revealed MSE sample one session may ask the prover to train and supply.
MAX_SESSION_MODELS = 1_000_000
#: Models one SupplyModels call may ask for (the verifier asks for 1,024 at a time).
MAX_MODELS_PER_CALL = 4_096
#: RPCs one session may make after Hello (an honest run at the largest caps makes under 1,100:
#: ≤ 977 SupplyModels calls of 1,024 models, a few dozen rounds with their OpenAll, one Open,
#: one Finish).
MAX_CALLS_PER_SESSION = 4_096
#: Challenge tuples one client (one network host) may have being computed at once, over all its
#: sessions: one honest session's whole budget, so a single verifier is never refused.
MAX_TUPLES_IN_FLIGHT_PER_CLIENT = MAX_SESSION_TUPLES
#: Live sessions one client (one network host) may hold at once.
MAX_SESSIONS_PER_CLIENT = 8
#: Sessions of one client that may sit between Hello and Claim; a further Hello from it evicts
#: its oldest such session, so unfinished Hellos cannot lock anyone out.
MAX_GREETED_PER_CLIENT = 4
#: Seconds a session may sit between Hello and Claim before it is forgotten.
HELLO_TTL_S = 30.0
