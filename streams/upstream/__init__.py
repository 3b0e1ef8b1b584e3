"""What upstream systems would send, rendered from canonical events: FHIR R4 resources,
HL7 v2 messages, messaging webhooks and claims. The simulator uses them to send raw
traffic (`reftrack simulate --raw-share`), the tests to check that each adapter reads
back exactly the event that was written."""
