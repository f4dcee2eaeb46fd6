package imgcls.serving;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import software.amazon.ai.mms.servingsdk.Context;
import software.amazon.ai.mms.servingsdk.Model;
import software.amazon.ai.mms.servingsdk.ModelServerEndpoint;
import software.amazon.ai.mms.servingsdk.Worker;
import software.amazon.ai.mms.servingsdk.annotations.Endpoint;
import software.amazon.ai.mms.servingsdk.annotations.helpers.EndpointTypes;
import software.amazon.ai.mms.servingsdk.http.Request;
import software.amazon.ai.mms.servingsdk.http.Response;

/**
 * Replaces MMS's built-in /ping, which answers 200 even while no worker has loaded the model.
 * A worker counts as running once the Python handler's initialize (load + warm-up) has returned.
 */
@Endpoint(urlPattern = "ping", endpointType = EndpointTypes.INFERENCE,
          description = "200 once every model has a worker with the model loaded and warmed up, else 503")
public class ReadinessPing extends ModelServerEndpoint {
    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        // A multi-model endpoint starts with no model; SageMaker loads them after /ping says healthy.
        boolean ready = !ctx.getModels().isEmpty() || Boolean.getBoolean("imgcls.multiModel");
        for (Model model : ctx.getModels().values()) {
            boolean anyLoaded = false;
            for (Worker worker : model.getModelWorkers()) {
                anyLoaded |= worker.isRunning();
            }
            ready &= anyLoaded;
        }
        rsp.setStatus(ready ? 200 : 503);
        rsp.setContentType("application/json");
        String body = ready ? "{\"status\": \"Healthy\"}\n" : "{\"status\": \"Loading\"}\n";
        rsp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
    }
}
