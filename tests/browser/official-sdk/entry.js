// Bundled by the test with esbuild into aws-sdk.js: the AWS SDK for JavaScript v3 clients the
// page needs, exposed as window.AWSKVS (the KVS WebRTC SDK ships its own browser bundle).
import {
  KinesisVideoClient,
  DescribeSignalingChannelCommand,
  GetSignalingChannelEndpointCommand,
} from '@aws-sdk/client-kinesis-video';
import {
  KinesisVideoSignalingClient,
  GetIceServerConfigCommand,
} from '@aws-sdk/client-kinesis-video-signaling';

window.AWSKVS = {
  KinesisVideoClient,
  DescribeSignalingChannelCommand,
  GetSignalingChannelEndpointCommand,
  KinesisVideoSignalingClient,
  GetIceServerConfigCommand,
};
