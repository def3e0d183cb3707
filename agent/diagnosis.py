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
        "Check the user's SIP address and lab password (`phoneprov pool user set-password`).",
    ),
    (Stage.WEB_TICKET, "NO_PIN"): (
        "This phone has no PIN configured, so it cannot get a certificate over the network (none is sent).",
        "Provision it over the USB tether (`phoneprov tether provision` on the PC), or set a PIN in agent.toml.",
    ),
    (Stage.WEB_TICKET, "2099"): (
        "The Web Ticket service failed inside the pool — most often it cannot read the user from the data store.",
        "Check the home pool's data store (`phoneprov logs collect` shows 'data store unavailable' on the node "
        "that answered); power-cycle the phone to retry.",
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
    (Stage.REGISTER, "4101"): (
        "The registrar does not know the phone's certificate (not issued by the pool CA, not published for "
        "this user in the data store, or revoked).",
        "Power-cycle the phone to provision a new certificate; if it persists check that CertProv publishes "
        "to the data store the registrar reads (the user's home pool).",
    ),
    (Stage.REGISTER, "4102"): (
        "The registrar refused the phone's certificate as expired or not yet valid.",
        "Check the phone's and the pool's clocks, then power-cycle the phone to provision a new certificate.",
    ),
    (Stage.REGISTER, "4103"): (
        "The phone's certificate names another user than the SIP address it registers (AOR mismatch).",
        "Sign the phone in again as the certificate's user, or re-provision it for this user.",
    ),
    (Stage.REGISTER, "4104"): (
        "The registrar cannot reach the data store to check the certificate or record the registration.",
        "Power-cycle the phone to retry (sporadic); if it persists, restore the home pool's data store "
        "and check the registrar log on every node.",
    ),
    (Stage.REGISTER, "4105"): (
        "The registrar is unhealthy and refuses registrations (503).",
        "Restore the registrar service on the pool (check every node's registrar log), then power-cycle.",
    ),
    (Stage.REGISTER, "BAD_SIGNATURE"): (
        "The registrar's TLS-DSK signature (rspauth) did not verify: the answer was not from the registrar "
        "the phone authenticated, or was altered.",
        "Check for a proxy or load balancer rewriting SIP between the phone and the registrar.",
    ),
    (Stage.REGISTER, "401_LOOP"): (
        "The registrar kept asking for TLS-DSK authentication without accepting it (401 loop).",
        "Check the registrar log for the refusal reason (signature, SA); all nodes must share the pool CA.",
    ),
    (Stage.REGISTER, "TLS_DSK"): (
        "The TLS-DSK handshake carried in SIP failed (bad flight, or the registrar's certificate inside it "
        "is not trusted).",
        "Check the registrar's certificate chains to a root the phone ships and names the registrar FQDN.",
    ),
    (Stage.REGISTER, "NO_TLS_DSK"): (
        "The registrar does not offer TLS-DSK (certificate) authentication.",
        "Enable certificate authentication (UseCertificateAuth) on the registrar.",
    ),
    (Stage.REGISTER, "UNEXPECTED"): (
        "The registrar answered the REGISTER with an unexpected status.",
        "See the detail for the status; check the registrar log.",
    ),
    (Stage.REGISTER, "MALFORMED"): (
        "The registrar sent SIP the phone cannot parse.",
        "Check that the phone talks to a SIP registrar on the configured port (TLS 5061).",
    ),
    (Stage.REGISTER, "UNREACHABLE"): (
        "The registrar cannot be reached (wrong FQDN or port, DNS, or the service is down).",
        "Check option 120 / the configured registrar FQDN, DNS, and that TCP 5061 is open and listening.",
    ),
    (Stage.REGISTER, "TIMEOUT"): (
        "The registrar did not answer in time.",
        "Check the registrar is healthy and not overloaded; power-cycle the phone to retry.",
    ),
    (Stage.REGISTER, "CONNECTION_LOST"): (
        "The registrar closed the TLS connection during sign-in.",
        "Check the registrar log for why it dropped the connection; power-cycle the phone to retry.",
    ),
    (Stage.REGISTER, "REDIRECT_LOOP"): (
        "The registrars kept redirecting the phone without reaching its home pool.",
        "Fix the users' home-pool assignment so the first-contact pool redirects to a pool that serves them.",
    ),
    (Stage.REGISTER, "TLS"): (
        "The TLS connection to the registrar failed before SIP could start.",
        "Check the registrar listens with TLS 1.2+ on the configured port.",
    ),
    (Stage.REGISTER, "CHAIN_INCOMPLETE"): (
        "The registrar's certificate does not chain to a root shipped on the phone.",
        "Serve the registrar's full chain, or add the lab root to the phone's shipped roots.",
    ),
    (Stage.REGISTER, "CHAIN_INVALID"): (
        "The registrar's certificate reaches a shipped root but is not valid (dates, name, usage).",
        "Check the phone's clock and that the registrar certificate's SAN names the registrar FQDN.",
    ),
    (Stage.REGISTER, "CERT_EXPIRING"): (
        "The phone's certificate has less than 5 minutes left: no security association can be built on it.",
        "Re-provision (stages WEB_TICKET to CERT_PUBLISH); check the pool's validity policy and the phone's clock.",
    ),
    (Stage.REGISTER, "NO_REGISTRAR"): (
        "The phone knows no registrar: DHCP gave no option 120 and none is configured.",
        "Serve option 120 (the pool FQDN, encoding 0) or configure the registrar FQDN on the phone.",
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
