"""The failure catalogue (protocol.md §9): (stage, code) → problem and remedy, in one place.

Synthetic transactions, the demo and the phone's status all explain failures with these words, so an
engineer reading any of them sees the same diagnosis for the same fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.stages import AgentError, Stage


@dataclass(frozen=True)
class Diagnosis:
    stage: Stage
    code: str
    problem: str
    remedy: str

    def as_dict(self) -> dict[str, str]:
        return {"stage": self.stage.value, "code": self.code, "problem": self.problem, "remedy": self.remedy}


_FIX_DHCP = (
    "Check the DHCP server serves option 43 (vendor class MS-UC-Client, sub-options 1-5) and option 120 "
    "(registrar FQDN), e.g. with `phoneprov dhcp-config`; or configure the CertProv URL and registrar FQDN "
    "on the phone to bypass DHCP."
)

# (stage, code) → (problem, remedy). Code "*" is the stage's fallback.
_CATALOGUE: dict[tuple[Stage, str], tuple[str, str]] = {
    (Stage.NET, "*"): (
        "The phone has no usable network link or address.",
        "Check cabling, link and DHCP lease.",
    ),
    (Stage.DHCP_INFORM, "NO_ANSWER"): (
        "Unable to locate Lync Certificate Web service: no DHCPACK to the DHCPINFORM.",
        _FIX_DHCP,
    ),
    (Stage.DHCP_INFORM, "NO_OPTION_43"): (
        "Unable to locate Lync Certificate Web service: the DHCPACK has no usable option 43.",
        _FIX_DHCP,
    ),
    (Stage.DHCP_INFORM, "NO_REGISTRAR"): (
        "The DHCPACK names no registrar (option 120) and no SRV fallback answered.",
        _FIX_DHCP,
    ),
    (Stage.DHCP_INFORM, "INSECURE_URL"): (
        "DHCP (or the configuration) points the phone at a CertProv URL that is not HTTPS; the phone refuses it.",
        "Serve option 43 with URLScheme `https` (sub-option 2) and the Web Services' HTTPS port.",
    ),
    (Stage.DHCP_INFORM, "OPT120_ADDRESSES"): (
        "Option 120 lists IP addresses; a Lync phone needs the registrar's name (TLS checks it).",
        "Serve option 120 with encoding 0 (domain names), e.g. `phoneprov dhcp-config`.",
    ),
    (Stage.DHCP_INFORM, "*"): ("DHCP discovery of the pool failed.", _FIX_DHCP),
    (Stage.TIME, "KOD"): (
        "The time server sent a Kiss-o'-Death (it refuses to serve this phone).",
        "Point option 42 at a time server that serves the voice network, or lift its rate limit.",
    ),
    (Stage.TIME, "UNSYNCHRONISED"): (
        "The time server is not synchronised itself (leap indicator 3 or stratum 16).",
        "Fix the time server's own upstream synchronisation.",
    ),
    (Stage.TIME, "*"): (
        "No time server answered (option 42, _ntp._udp SRV and the fallback were all unreachable).",
        "Serve option 42 or publish _ntp._udp.<domain>; check UDP 123 is open to the time source.",
    ),
    (Stage.ROOT_CHAIN, "ROOT_CHAIN_DOWNLOAD"): (
        "Error downloading certificate chain from OCS Registrar: the anonymous HTTP endpoint failed.",
        "Check the Web Services' anonymous HTTP site (port 80) is up and serves /rootchain.",
    ),
    (Stage.ROOT_CHAIN, "CHAIN_INCOMPLETE"): (
        "The Web Services certificate does not chain to a root shipped on the phone.",
        "Serve the full chain (issuing CAs up to a root) from the Web Services, or add the lab root to the "
        "phone's shipped roots (`phoneprov certs add-root`).",
    ),
    (Stage.ROOT_CHAIN, "CHAIN_INVALID"): (
        "The Web Services certificate chain reaches a shipped root but is not valid (dates, name, usage).",
        "Check the phone's clock and the web certificate's validity, SAN (pool FQDN) and serverAuth usage.",
    ),
    (Stage.ROOT_CHAIN, "CHAIN_REFUSED"): (
        "The Web Services offered an abusive chain (too many intermediates) and the phone refused it.",
        "Serve only the web server's issuing chain (a few CA certificates) from the Web Services.",
    ),
    (Stage.ROOT_CHAIN, "NO_ANCHORS"): (
        "The phone image has no usable shipped roots.",
        "Rebuild the shipped roots (`make certs`) and add the lab root (`phoneprov certs add-root`).",
    ),
    (Stage.ROOT_CHAIN, "TLS"): (
        "The TLS connection to the Web Services failed before the chain could be judged.",
        "Check the Web Services' HTTPS port (opt 43 sub-option 4) is reachable and speaks TLS 1.2+.",
    ),
    (Stage.ROOT_CHAIN, "*"): (
        "The Web Services certificate could not be checked.",
        "Check the pool's web certificate and chain.",
    ),
    (Stage.WEB_TICKET, "INSECURE_URL"): (
        "The Web Services' metadata names a non-HTTPS endpoint for the PIN or the ticket; the phone refuses it.",
        "Publish https:// addresses for the Web Ticket and WebTicket_Proof endpoints in /mex.",
    ),
    (Stage.WEB_TICKET, "CREDENTIAL"): (
        "The Web Ticket service refused the user's credential (Basic sign-in).",
        "Check the user's SIP address and lab password (`phoneprov pool set-password`).",
    ),
    (Stage.WEB_TICKET, "2001"): ("Wrong phone number/extension or PIN.", "Re-enter the number and PIN."),
    (Stage.WEB_TICKET, "2002"): (
        "PIN authentication is locked for this user (too many wrong PINs).",
        "Locked: contact the administrator to unlock the PIN (or wait out the local lockout).",
    ),
    (Stage.WEB_TICKET, "2003"): (
        "The phone number matches several users.",
        "Sign in with number and extension, or make the users' line URIs unique.",
    ),
    (Stage.WEB_TICKET, "2004"): ("The user's PIN has expired.", "Set a new PIN for the user."),
    (Stage.WEB_TICKET, "2005"): (
        "PIN authentication is disabled for the user or the pool.",
        "Enable the user and PIN authentication (UsePinAuth).",
    ),
    (Stage.WEB_TICKET, "2006"): (
        "The SIP address given does not match the user the PIN belongs to.",
        "Use the SIP address of the user whose number and PIN were entered.",
    ),
    (Stage.WEB_TICKET, "*"): (
        "The Web Ticket service refused or failed the request.",
        "Check the Web Ticket service and its log on every pool node.",
    ),
    (Stage.CERT_REQUEST, "3001"): (
        "The web ticket was rejected (unknown, expired or badly signed).",
        "Retry sign-in; if it persists check the pool nodes' clocks and that all nodes share tickets.",
    ),
    (Stage.CERT_REQUEST, "3002"): (
        "The certificate was requested for another user than the ticket's.",
        "Request the certificate for the SIP URI the web ticket names.",
    ),
    (Stage.CERT_REQUEST, "3003"): (
        "The certificate request was malformed.",
        "Check the phone's CSR and SOAP.",
    ),
    (Stage.CERT_REQUEST, "3004"): (
        "The CSR key size is outside the pool's MinCSRKeySize..MaxCSRKeySize.",
        "Use an RSA key size the pool accepts (2048 by default).",
    ),
    (Stage.CERT_REQUEST, "3006"): ("The user is not enabled for sign-in.", "Enable the user in the pool."),
    (Stage.CERT_REQUEST, "BadCertificate"): (
        "The certificate returned is not for this phone's key or user, or does not chain to the CertProv CA.",
        "Check the pool's CertProv CA and the user's SIP URI.",
    ),
    (Stage.CERT_REQUEST, "*"): (
        "Could not download a CS Certificate for the given user.",
        "Check the Certificate Provisioning service and its log on every pool node.",
    ),
    (Stage.CERT_PUBLISH, "3005"): (
        "The certificate could not be published: the data store of the user's home pool is unavailable.",
        "Power-cycle the phone to retry (sporadic); if it persists, restore the home pool's data store "
        "(back-end database) and check the CertProv log on every node for 'data store unavailable'.",
    ),
    (Stage.CERT_PUBLISH, "*"): (
        "The certificate was issued but could not be published.",
        "Check the home pool's data store.",
    ),
    (Stage.REGISTER, "*"): (
        "Registration with the registrar failed.",
        "Check the registrar FQDN and port, that it is healthy, and that the user's certificate is published.",
    ),
}


def lookup(stage: Stage, code: str) -> Diagnosis:
    """The catalogue entry for (stage, code), falling back to the stage's generic entry."""
    problem, remedy = _CATALOGUE.get((stage, code)) or _CATALOGUE.get(
        (stage, "*"), ("Sign-in failed.", "See the detail.")
    )
    return Diagnosis(stage, code, problem, remedy)


def diagnose(error: AgentError) -> Diagnosis:
    """A diagnosis for a failed stage; an error's own remedy wins over the catalogue's."""
    stage = error.stage or Stage.NET
    entry = lookup(stage, error.code)
    if error.remedy:
        return Diagnosis(stage, error.code, entry.problem, error.remedy)
    return entry
