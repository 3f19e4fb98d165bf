"""The fields of the custom resources' APIs (cert-manager.io/v1 Certificate and Issuer,
monitoring.coreos.com/v1 ServiceMonitor) at the paths the manifests use.  No schema is
bundled for them (kubernetes-validate knows built-in kinds only), so
`invariants.crd_fields` catches a misspelled field with these instead."""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


CRD_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("Certificate", "spec"): _names(
        """subject literalSubject commonName duration renewBefore renewBeforePercentage
        dnsNames ipAddresses uris otherNames emailAddresses secretName secretTemplate
        keystores issuerRef isCA usages privateKey signatureAlgorithm
        encodeUsagesInRequest revisionHistoryLimit additionalOutputFormats nameConstraints"""
    ),
    ("Certificate", "spec.privateKey"): _names("algorithm size encoding rotationPolicy"),
    ("Certificate", "spec.issuerRef"): _names("name kind group"),
    ("Issuer", "spec"): _names("selfSigned ca acme vault venafi"),
    ("ServiceMonitor", "spec"): _names(
        """jobLabel targetLabels podTargetLabels endpoints selector selectorMechanism
        namespaceSelector sampleLimit scrapeProtocols targetLimit labelLimit
        labelNameLengthLimit labelValueLengthLimit keepDroppedTargets attachMetadata
        scrapeClass bodySizeLimit"""
    ),
    ("ServiceMonitor", "spec.endpoints[]"): _names(
        """port targetPort path scheme params interval scrapeTimeout tlsConfig
        bearerTokenFile bearerTokenSecret authorization honorLabels honorTimestamps
        trackTimestampsStaleness basicAuth oauth2 metricRelabelings relabelings proxyUrl
        followRedirects enableHttp2 filterRunning"""
    ),
    ("ServiceMonitor", "spec.endpoints[].tlsConfig"): _names(
        """ca cert keySecret serverName insecureSkipVerify caFile certFile keyFile
        minVersion maxVersion"""
    ),
}
